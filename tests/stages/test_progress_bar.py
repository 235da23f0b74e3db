"""The training progress bar's epoch text: Lightning's `Epoch N/max_epochs-1` read `Epoch 0/-2` in a
step-limited run (max_epochs=-1, as the experiments set it)."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate

from damo_lit.cli.common import compose


def description(max_epochs: int, max_steps: int, epoch: int = 0) -> str:
    """The epoch text of conf/callbacks/default.yaml's progress bar under such a trainer."""
    bar = instantiate(compose("train", ["experiment=tiny_smoke", "callbacks.progress_bar.style=rich"]).callbacks.progress_bar)
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=max_steps, logger=False, enable_checkpointing=False,
                        callbacks=[bar], accelerator="cpu")  # fmt: skip
    bar.setup(trainer, None, "fit")
    return bar._get_train_description(epoch).strip()


def test_a_step_limited_run_shows_its_epoch_and_step_budget() -> None:
    assert compose("train", ["experiment=tiny_smoke"]).trainer.max_epochs == -1
    assert description(max_epochs=-1, max_steps=5) == "Epoch 0 (max_steps 5)"
    assert description(max_epochs=-1, max_steps=-1, epoch=3) == "Epoch 3"


def test_an_epoch_limited_run_keeps_lightnings_text() -> None:
    assert description(max_epochs=3, max_steps=-1, epoch=1) == "Epoch 1/2"
