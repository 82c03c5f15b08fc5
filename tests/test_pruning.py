import pytest
import torch

from dfkd import pruning
from dfkd.errors import DfkdError
from dfkd.models import DigitsCNN
from dfkd.modules import DistillModule


def _model():
    torch.manual_seed(0)
    return DigitsCNN(width=8)


@pytest.mark.parametrize("method", ["l1", "random"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_global_pruning_reaches_the_asked_ratio(method, ratio):
    model = pruning.prune(_model(), ratio, method=method)
    report = pruning.sparsity(model)
    assert report["overall"] == pytest.approx(ratio, abs=1.0 / report["weights"])
    assert set(report["layers"]) == {"features.0", "features.3", "features.7", "classifier"}


def test_global_l1_removes_the_smallest_weights():
    reference = _model()
    model = pruning.prune(_model(), 0.7)
    kept = torch.cat([m.weight.flatten() for _, m in pruning.prunable(model)])
    original = torch.cat([m.weight.detach().flatten() for _, m in pruning.prunable(reference)])
    threshold = original.abs().kthvalue(int(0.7 * original.numel())).values
    assert torch.all(kept[original.abs() < threshold] == 0)
    assert torch.all(kept[original.abs() > threshold] != 0)


def test_a_channels_last_teacher_prunes_like_a_contiguous_one():
    """A teacher trained on a GPU (trainer=gpu) has channels_last weights."""
    model = pruning.prune(_model().to(memory_format=torch.channels_last), 0.7)
    reference = pruning.prune(_model(), 0.7)
    for (_, m), (_, r) in zip(pruning.prunable(model), pruning.prunable(reference)):
        assert torch.equal(m.weight_mask, r.weight_mask)


def test_layer_scope_prunes_every_layer_to_the_ratio():
    report = pruning.sparsity(pruning.prune(_model(), 0.8, scope="layer"))
    for name, fraction in report["layers"].items():
        assert fraction == pytest.approx(0.8, abs=0.01), name


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(DfkdError, match=r"pruning\.ratio"):
        pruning.prune(_model(), ratio)


def test_unknown_method_is_refused():
    with pytest.raises(DfkdError, match=r"pruning\.method"):
        pruning.prune(_model(), 0.5, method="magic")


def test_zeros_survive_recovery_steps_and_saving():
    teacher = _model().eval()
    student = pruning.prune(_model().train(), 0.9)
    zero_before = {n: (m.weight == 0).clone() for n, m in pruning.prunable(student)}
    module = DistillModule(teacher, student, 10, lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                           temperature=4.0)
    optimizer = module.optimizer_factory(student.parameters())
    for _ in range(5):
        loss = module.training_step((torch.randn(16, 1, 8, 8), torch.zeros(16)), 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, m in pruning.prunable(student):
        assert torch.all(m.weight[zero_before[name]] == 0), name
    assert pruning.check_kept(student, 0.9) >= 0.9

    state = pruning.make_permanent(student).state_dict()
    assert not any(k.endswith(("_orig", "_mask")) for k in state)
    plain = DigitsCNN(width=8)
    plain.load_state_dict(state)  # a plain state dict of the unpruned architecture
    assert pruning.sparsity(plain)["overall"] == pytest.approx(0.9, abs=1e-3)


def test_lost_sparsity_fails_loudly():
    model = pruning.make_permanent(pruning.prune(_model(), 0.9))
    with torch.no_grad():
        for _, m in pruning.prunable(model):
            m.weight.add_(1.0)  # what a recovery that ignores masks would do
    with pytest.raises(DfkdError, match="undid the pruning"):
        pruning.check_kept(model, 0.9)
