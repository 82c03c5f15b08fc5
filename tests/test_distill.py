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
