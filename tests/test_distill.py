import copy

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dfkd.errors import DfkdError
from dfkd.models import DigitsCNN
from dfkd.modules import DistillModule, kd_loss, mix_batch


def _sgd(params):
    return torch.optim.SGD(params, lr=0.05)


def test_kd_loss_is_zero_for_equal_outputs_and_scaled_by_t_squared():
    logits = torch.randn(8, 10)
    assert kd_loss(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(8, 10)
    t = 3.0
    manual = torch.nn.functional.kl_div((other / t).log_softmax(1), (logits / t).softmax(1),
                                        reduction="batchmean") * t * t
    assert kd_loss(other, logits, t).item() == pytest.approx(manual.item(), rel=1e-5)


def test_logit_mse_is_the_high_temperature_limit_of_kd_and_ignores_the_temperature():
    torch.manual_seed(0)
    teacher = torch.randn(8, 10)
    student = teacher + 0.3 * torch.randn(8, 10)
    teacher, student = teacher - teacher.mean(1, keepdim=True), student - student.mean(1, keepdim=True)
    mse = kd_loss(student, teacher, 4.0, "mse")
    assert mse.item() == pytest.approx(0.5 * ((student - teacher) ** 2).mean().item(), rel=1e-6)
    assert kd_loss(student, teacher, 1.0, "mse").item() == mse.item()
    # Hinton et al.: the T^2-scaled KL tends to the logit MSE, so one learning rate suits both
    assert kd_loss(student.double(), teacher.double(), 1000.0).item() == pytest.approx(mse.item(), rel=1e-2)
    assert kd_loss(student.double(), teacher.double(), 1.0).item() != pytest.approx(mse.item(), rel=1e-1)
    assert kd_loss(teacher, teacher, 4.0, "mse").item() == 0.0
    with pytest.raises(DfkdError, match=r"recovery\.loss"):
        kd_loss(student, teacher, 4.0, "MSE")


def test_teacher_stays_frozen_in_eval_mode_through_a_lightning_fit():
    torch.manual_seed(0)
    teacher, student = DigitsCNN(width=4), DigitsCNN(width=4)
    teacher.train()  # even a teacher handed over in train mode is frozen
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []

    class Spy(DistillModule):
        def training_step(self, batch, batch_idx):
            seen.append(self.teacher.training)
            return super().training_step(batch, batch_idx)

    module = Spy(teacher, student, 10, _sgd)
    data = DataLoader(TensorDataset(torch.randn(64, 1, 8, 8) * 3, torch.zeros(64, dtype=torch.long)),
                      batch_size=16)
    L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              accelerator="cpu").fit(module, train_dataloaders=data)
    assert seen == [False] * 4
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


def test_a_nan_loss_stops_with_advice():
    teacher, student = DigitsCNN(width=4), DigitsCNN(width=4)
    with torch.no_grad():
        student.classifier.weight.fill_(float("nan"))
    module = DistillModule(teacher, student, 10, _sgd)
    with pytest.raises(DfkdError, match=r"recovery\.optimizer\.lr.*recovery\.gradient_clip_val"):
        module.training_step((torch.randn(4, 1, 8, 8), torch.zeros(4)), 0)


def test_frozen_student_batchnorm_keeps_its_statistics_and_learns_its_affine():
    torch.manual_seed(0)
    teacher, student = DigitsCNN(width=4), DigitsCNN(width=4)
    bn = student.features[1]
    before_mean, before_weight = bn.running_mean.clone(), bn.weight.detach().clone()
    module = DistillModule(teacher, student, 10, _sgd, bn_statistics="frozen")
    data = DataLoader(TensorDataset(torch.randn(64, 1, 8, 8) * 3 + 1, torch.zeros(64, dtype=torch.long)),
                      batch_size=16)
    L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              accelerator="cpu").fit(module, train_dataloaders=data)
    assert torch.equal(bn.running_mean, before_mean)
    assert not torch.equal(bn.weight.detach(), before_weight)
    trained = DistillModule(teacher, DigitsCNN(width=4), 10, _sgd)  # "train": statistics move
    moving = trained.net.features[1].running_mean.clone()
    L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              accelerator="cpu").fit(trained, train_dataloaders=data)
    assert not torch.equal(trained.net.features[1].running_mean, moving)


def test_recalibration_sets_batchnorm_statistics_to_those_of_the_batches():
    from dfkd.modules import recalibrate_batchnorm

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).eval()
    batches = [torch.randn(32, 3, 4, 4) * 2 + 5 for _ in range(4)]
    assert recalibrate_batchnorm(bn, batches) == 128
    allx = torch.cat(batches)
    assert torch.allclose(bn.running_mean, allx.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, allx.var((0, 2, 3)), rtol=0.02)
    assert not bn.training and bn.momentum == 0.1  # as it was


def test_synthesis_borrowing_the_student_leaves_each_layer_in_its_mode():
    """The synthesizer looks at the student mid-training (ADI) in eval mode; afterwards a
    BatchNorm layer held frozen (recovery.student_bn=frozen) must still be frozen."""
    from dfkd.synthesis.base import temporarily_frozen

    student = DigitsCNN(width=4).train()
    student.features[1].eval()
    with temporarily_frozen(student):
        assert not any(m.training for m in student.modules())
        assert not any(p.requires_grad for p in student.parameters())
    assert student.training and student.features[0].training and not student.features[1].training
    assert all(p.requires_grad for p in student.parameters())


def test_feature_loss_is_zero_for_equal_features_and_free_of_the_layer_scale():
    from dfkd.modules import feature_loss

    torch.manual_seed(0)
    t, s = torch.randn(8, 6, 4, 4), torch.randn(8, 6, 4, 4)
    assert feature_loss([t], [t], [None]).item() == pytest.approx(0.0, abs=1e-7)
    # the same relative error reads the same on a layer 100 times larger, in both units
    assert feature_loss([100 * s], [100 * t], [None]).item() == pytest.approx(feature_loss([s], [t], [None]).item(), rel=1e-4)
    scale = torch.full((6,), 2.0)
    assert feature_loss([100 * s], [100 * t], [100 * scale]).item() == pytest.approx(
        feature_loss([s], [t], [scale]).item(), rel=1e-4)
    assert feature_loss([t + 2.0], [t], [scale]).item() == pytest.approx(1.0, rel=1e-5)  # one std off


def _distill_steps(student, teacher, steps, **kd):
    torch.manual_seed(1)
    module = DistillModule(teacher, student, 10, lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), **kd)
    data = DataLoader(TensorDataset(torch.randn(256, 1, 8, 8) * 2, torch.zeros(256, dtype=torch.long)), batch_size=32)
    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              accelerator="cpu").fit(module, train_dataloaders=data)
    return module


@pytest.mark.parametrize("layers", ["penultimate", "batchnorm"])
def test_the_feature_term_brings_the_students_features_to_the_teachers(layers):
    """recovery.feature_weight: after the same KD steps, the student's features at the tapped
    layers are closer to the teacher's with the term than with logits alone; and the hooks are
    gone afterwards (an exported student carries none)."""
    from dfkd.modules import captured_inputs, feature_loss, feature_scales, feature_taps

    torch.manual_seed(0)
    teacher = DigitsCNN(width=4).eval()
    students = []
    for weight in (0.0, 1.0):
        student = DigitsCNN(width=4)
        student.load_state_dict(teacher.state_dict())
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.3 * torch.randn_like(p))  # a damaged copy, as pruning leaves it
        students.append(_distill_steps(student, teacher, 16, feature_weight=weight, feature_layers=layers).net)
    x = torch.randn(128, 1, 8, 8) * 2

    def distance(student):
        student.eval()
        with torch.no_grad(), captured_inputs(feature_taps(teacher, layers)) as t, \
                captured_inputs(feature_taps(student, layers)) as s:
            teacher(x), student(x)
        return feature_loss(s, t, feature_scales(feature_taps(teacher, layers))).item()

    logits_only, with_features = map(distance, students)
    assert with_features < 0.8 * logits_only, (logits_only, with_features)
    assert not any(m._forward_hooks for net in (teacher, *students) for m in net.modules())


def test_a_feature_term_between_layers_of_other_widths_is_refused():
    teacher, narrower = DigitsCNN(width=8), DigitsCNN(width=4)
    with pytest.raises(DfkdError, match=r"recovery\.feature_weight=1 .*recovery\.feature_weight=0"):
        DistillModule(teacher, narrower, 10, _sgd, feature_weight=1.0, feature_layers="batchnorm")
    with pytest.raises(DfkdError, match=r"recovery\.feature_layers='conv' is unknown"):
        DistillModule(teacher, teacher, 10, _sgd, feature_weight=1.0, feature_layers="conv")


def test_mixed_batches_are_made_of_the_batch_itself():
    """recovery.mix: mixup blends two images of the batch in one proportion, CutMix pastes a
    rectangle of another image; either way each KD input is new, and "none" leaves the batch alone."""
    torch.manual_seed(0)
    n = 16
    rng = np.random.default_rng(0)
    x = torch.eye(n).view(n, 1, 1, n)  # image i is the unit vector e_i
    assert mix_batch(x, "none", 1.0, rng) is x
    mixed = mix_batch(x, "mixup", 1.0, rng).view(n, n)
    assert torch.allclose(mixed.sum(1), torch.ones(n))  # a convex blend of two images
    lam = mixed.diagonal()
    assert ((mixed > 0).sum(1) <= 2).all() and (lam > 0).all()
    blended = lam < 1  # the rows not mixed with themselves all share one proportion
    assert blended.any() and torch.allclose(lam[blended], lam[blended][0].expand(int(blended.sum())))
    images = torch.arange(n, dtype=torch.float).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    cut = mix_batch(images, "cutmix", 1.0, rng)
    changed = cut != images
    assert changed.any()
    for i in range(n):  # the pasted part is one rectangle, taken from one other image
        values = set(cut[i].unique().tolist())
        assert i in values or changed[i].all() and len(values) == 1
        assert len(values) <= 2
        rows, cols = changed[i, 0].any(1), changed[i, 0].any(0)
        assert int(changed[i, 0].sum()) in (0, int(rows.sum()) * int(cols.sum()))


def test_kd_on_mixed_batches_shows_both_networks_the_mixed_images(make_cfg):
    """recovery.mix reaches the KD step from the config: teacher and student see the same mixed
    batch, not the one served; the draws are the module's own (a resumed run repeats none)."""
    from dfkd.config import build

    torch.manual_seed(0)
    teacher, student = DigitsCNN(width=4), DigitsCNN(width=4)
    served = torch.randn(16, 1, 8, 8)
    for mix in ("mixup", "cutmix"):
        recovery = build(make_cfg("recovery=real_kd", f"recovery.mix={mix}").recovery, "recovery")
        module = recovery.module(teacher, student, 10, channels_last=False)
        seen = []
        hooks = [net.register_forward_pre_hook(lambda m, args: seen.append(args[0])) for net in (teacher, student)]
        module.training_step((served, torch.zeros(16)), 0)
        for h in hooks:
            h.remove()
        assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[0], served), mix
        state = module.mixer.bit_generator.state
        module.on_load_checkpoint({"mixer": state})
        first = module.mixer.permutation(16)
        module.on_load_checkpoint({"mixer": state})
        assert (module.mixer.permutation(16) == first).all()  # the checkpointed stream goes on where it was
    with pytest.raises(DfkdError, match=r"recovery\.mix='cutout' is unknown"):
        DistillModule(teacher, student, 10, _sgd, mix="cutout")


def test_the_anchor_keeps_the_student_near_the_weights_recovery_started_from():
    """recovery.anchor_weight (L2-SP): after the same KD steps the student's weights are closer to
    where they started with the anchor than without, and the anchor itself never moves; it stays
    out of the module's state, so checkpoints made with and without it load into each other."""
    torch.manual_seed(0)
    teacher, start = DigitsCNN(width=4).eval(), DigitsCNN(width=4)

    def drift(module):
        return sum((p - q).pow(2).sum().item() for p, q in zip(module.net.parameters(), start.parameters()))

    free = _distill_steps(copy.deepcopy(start), teacher, 16)
    anchored = _distill_steps(copy.deepcopy(start), teacher, 16, anchor_weight=5.0)
    assert drift(anchored) < 0.5 * drift(free), (drift(anchored), drift(free))
    assert all(torch.equal(a, s) for a, s in zip(anchored.anchor, start.parameters()))
    assert not any(a.requires_grad for a in anchored.anchor)
    assert free.anchor is None  # off by default: no copy kept
    assert anchored.state_dict().keys() == free.state_dict().keys()
    DistillModule(teacher, DigitsCNN(width=4), 10, _sgd, anchor_weight=5.0).load_state_dict(free.state_dict())
    DistillModule(teacher, DigitsCNN(width=4), 10, _sgd).load_state_dict(anchored.state_dict())
    from dfkd.recovery import FineTune, RealKD

    for method in (RealKD("real_kd", anchor_weight=0.5, optimizer=_sgd),
                   FineTune("finetune", anchor_weight=0.5, optimizer=_sgd)):
        module = method.module(teacher, DigitsCNN(width=4), 10, channels_last=False)
        assert module.anchor_weight == 0.5 and module.anchor is not None  # every method that trains


def test_teacher_flip_is_refused_where_mirroring_changes_the_class_but_not_where_no_teacher_labels():
    from types import SimpleNamespace

    from dfkd.recovery import FineTune, NoRecovery, RealKD

    unmirrored, model = SimpleNamespace(hflip=False, name="digits"), DigitsCNN(width=4)
    with pytest.raises(DfkdError, match=r"recovery\.teacher_flip=false"):
        RealKD("real_kd", teacher_flip=True).validate(model, unmirrored, 0)
    for method in (FineTune("finetune", teacher_flip=True), NoRecovery("none", teacher_flip=True)):
        method.validate(model, unmirrored, 0)  # no teacher labels to flip: finetune trains on the labels, none not at all


def test_the_flipped_teacher_labels_each_batch_by_its_mean_on_both_mirror_images():
    """recovery.teacher_flip: the KD target is the teacher's mean logits on the images and their
    mirror images, so the student learns from the flip-averaged teacher; off, the plain teacher."""
    from dfkd.recovery import RealKD

    torch.manual_seed(0)
    teacher, x = DigitsCNN(width=4).eval(), torch.randn(8, 1, 8, 8)
    flipped = (teacher(x) + teacher(torch.flip(x, dims=[-1]))) / 2
    assert not torch.allclose(flipped, teacher(x), atol=1e-3)  # this teacher is not mirror-symmetric
    for flip, target in ((True, flipped), (False, teacher(x))):
        module = RealKD("real_kd", teacher_flip=flip, optimizer=_sgd).module(teacher, DigitsCNN(width=4), 10, False)
        loss = module.training_step((x, torch.zeros(8)), 0)
        assert loss.item() == pytest.approx(kd_loss(module.net(x), target.detach(), 4.0).item(), rel=1e-5), flip
    # with the feature term, the features compared are the teacher's on the images as served, once
    from dfkd.modules import captured_inputs, feature_loss, feature_scales, feature_taps

    method = RealKD("real_kd", teacher_flip=True, feature_weight=1.0, feature_layers="batchnorm", optimizer=_sgd)
    module = method.module(teacher, DigitsCNN(width=4), 10, False)
    loss = module.training_step((x, torch.zeros(8)), 0)
    taps = feature_taps(teacher, "batchnorm"), feature_taps(module.net, "batchnorm")
    with torch.no_grad(), captured_inputs(taps[0]) as ours:
        teacher(x)
    with captured_inputs(taps[1]) as theirs:
        logits = module.net(x)
    expected = kd_loss(logits, flipped.detach(), 4.0) + feature_loss(theirs, ours, feature_scales(taps[0]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
