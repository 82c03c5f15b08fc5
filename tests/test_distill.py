import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dfkd.errors import DfkdError
from dfkd.models import DigitsCNN
from dfkd.modules import DistillModule, kd_loss


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
