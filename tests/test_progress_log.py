"""The plain progress lines of runs without a progress bar (run.log, Slurm, CI): a validation's
figures are reported with the step they were measured at, never carried over to a later step's
line as if they were new."""

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from dfkd.trainer import make_trainer

CONF = Path(__file__).resolve().parents[1] / "conf"


class StepStamped(L.LightningModule):
    """Logs, at each validation, the step it ran at: a line can be checked against its step."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", float(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_step_lines_report_each_validation_at_its_own_step(caplog):
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)
    cfg = OmegaConf.load(CONF / "trainer" / "cpu.yaml")  # what conf/trainer gives, bar off (run.log)
    cfg.enable_progress_bar = False
    trainer = make_trainer(cfg, "recovery", progress_every=2, max_steps=6, max_epochs=-1, logger=False,
                           enable_checkpointing=False, val_check_interval=2, check_val_every_n_epoch=None,
                           num_sanity_val_steps=0)
    with caplog.at_level(logging.INFO, logger="dfkd"):
        trainer.fit(StepStamped(), train_dataloaders=data, val_dataloaders=data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recovery step")]
    validations = [line for line in lines if ", validation:" in line]
    assert [line.split(":")[0] for line in validations] == [
        f"recovery step {s}/6, validation" for s in (2, 4, 6)]
    for line in validations:  # the figure measured at step s, shown as step s's
        step = int(line.split()[2].split("/")[0])
        assert f"val/acc {step}" in line, line
    steps = [line for line in lines if ", validation:" not in line]
    assert len(steps) == 3 and all("train/loss" in line and "val/" not in line for line in steps), steps


def test_a_trainer_prints_lightnings_own_lines_but_not_its_advert(caplog):
    cfg = OmegaConf.load(CONF / "trainer" / "cpu.yaml")
    with caplog.at_level(logging.INFO):
        make_trainer(cfg, "recovery", max_steps=1, logger=False, enable_checkpointing=False)
    assert "GPU available" in caplog.text  # the filter is narrow: Lightning's facts still show
    assert "litlogger" not in caplog.text and "Tip" not in caplog.text
