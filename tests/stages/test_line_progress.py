"""Progress where the output is a file (a cluster job's log): plain lines with rate and time left,
not Rich's live bar, which draws nothing there until the loop ends."""

from __future__ import annotations

import io
import re

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from damo_lit.stages.callbacks import StageProgressBar
from damo_lit.stages.progress import LineProgressBar, progress_bar


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", self.layer(batch).pow(2).mean())

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(batches: int) -> DataLoader:
    return DataLoader(torch.randn(batches * 2, 2), batch_size=2)


def _trainer(bar: LineProgressBar, **kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_model_summary=False,
                     callbacks=[bar], num_sanity_val_steps=0, **kwargs)


def test_lines_for_training_validation_and_prediction() -> None:
    log = io.StringIO()
    bar = LineProgressBar(every_s=0, stream=log)
    trainer = _trainer(bar, max_steps=6, max_epochs=-1, val_check_interval=3, limit_val_batches=2)
    trainer.fit(Tiny(), _loader(3), _loader(2))
    trainer.predict(trainer.lightning_module, _loader(4))
    lines = log.getvalue().splitlines()
    train = [line for line in lines if line.startswith("Epoch")]
    assert re.fullmatch(r"Epoch 0 \| step 1/6 \(17%\) \| [\d.]+ it/s \| 0:\d\d elapsed, \d+:\d\d left \| "
                        r"train/loss [-\d.e]+", train[0]), train[0]
    assert train[-1].startswith("Epoch 1 | step 6/6 (100%)") and "elapsed (done)" in train[-1]
    validation = [line for line in lines if line.startswith("Validation")]
    assert len(validation) == 2 * 3 and validation[-1].startswith("Validation | batch 2/2 (100%)")
    predict = [line for line in lines if line.startswith("Predicting")]
    assert predict[0].startswith("Predicting | batch 1/4 (25%)") and predict[-1].startswith("Predicting | batch 4/4")


def test_lines_are_spaced_by_every_s() -> None:
    log = io.StringIO()
    trainer = _trainer(LineProgressBar(every_s=3600, stream=log), max_steps=5, max_epochs=-1, limit_val_batches=0)
    trainer.fit(Tiny(), _loader(5))
    assert [line.split(" | ")[1] for line in log.getvalue().splitlines()] == ["step 5/5 (100%)"], "only the end's"


def test_a_terminal_gets_the_rich_bar_and_a_file_gets_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert isinstance(progress_bar(stderr=True), StageProgressBar)
    assert isinstance(progress_bar(), LineProgressBar)
    assert isinstance(progress_bar(style="rich"), StageProgressBar)
    with pytest.raises(ValueError, match="callbacks.progress_bar.style must be one of auto, rich, lines"):
        progress_bar(style="bars")
