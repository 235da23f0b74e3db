"""Non-finite losses: a NaN or infinite loss skips its step (weights untouched) and is counted; after
stage.max_nonfinite_steps in a row the run stops with a clear error and checkpoints/nonfinite.ckpt,
which holds the weights of the last good step."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from damo_lit.cli.checkpoint import load_weights_only
from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run, fit, train_errors
from damo_lit.stages.base import NonFiniteLossError

from .helpers import run_overrides, subprocess_env

# Training-step calls whose loss is poisoned: two skipped (NaN, then inf), one good step, then
# NaN for good: with max_nonfinite_steps=3 the run stops at call 6, its last good step being call 3.
POISON = {1: float("nan"), 2: float("inf")}
FOREVER_FROM = 4
LIMIT = 3


class Weights(L.Callback):
    """The checkpointed weights (the lean state dict) after every training batch."""

    def __init__(self) -> None:
        self.after: list[dict[str, torch.Tensor]] = []
        self.counted: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs, batch, batch_idx: int) -> None:
        state = pl_module.state_dict()
        keep = pl_module.checkpoint_keys(list(state))
        self.after.append({k: v.detach().clone() for k, v in state.items() if k in keep})
        self.counted.append(float(trainer.callback_metrics["train/nonfinite_steps"]))


def poison_losses(stage: Any) -> list[int]:
    """Make the stage's LM loss non-finite at the POISON calls and from FOREVER_FROM on; returns the
    list of call numbers seen (appended to as training goes)."""
    calls: list[int] = []
    lm_loss = stage.lm_loss

    def poisoned(batch: Any, *args: Any, **kwargs: Any) -> Any:
        loss, embeds = lm_loss(batch, *args, **kwargs)
        call = len(calls)
        calls.append(call)
        bad = POISON.get(call, float("nan") if call >= FOREVER_FROM else None)
        return (loss * bad if bad is not None else loss), embeds

    stage.lm_loss = poisoned
    return calls


def test_nonfinite_steps_are_skipped_counted_and_a_streak_stops_with_the_last_good_weights(
        clean_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    overrides = run_overrides(clean_root, "trainer.max_epochs=3", "data.max_samples_per_split=12",
                              "callbacks.model_checkpoint=null", f"stage.max_nonfinite_steps={LIMIT}")  # fmt: skip
    stage, datamodule, trainer = build_run(compose_run("train", overrides, tmp_path))
    calls = poison_losses(stage)
    weights = Weights()
    trainer.callbacks.append(weights)
    with caplog.at_level(logging.WARNING, logger="damo_lit"), pytest.raises(NonFiniteLossError) as info:
        fit(trainer, stage, datamodule, None)

    assert len(calls) == FOREVER_FROM + LIMIT, "stopped at the third non-finite loss in a row, not before or after"
    message = str(info.value)
    assert f"NaN or infinite for {LIMIT} steps in a row" in message and "5 skipped in all" in message
    assert "stage.max_nonfinite_steps=3" in message and "nonfinite.ckpt" in message
    # Skipped steps leave the weights as they were; good steps train.
    after = weights.after
    assert len(after) == FOREVER_FROM + LIMIT - 1  # the batch that raised never ended
    for skipped in (1, 2, 4, 5):
        for key, value in after[skipped - 1].items():
            assert torch.equal(after[skipped][key], value), f"call {skipped} (non-finite) changed {key}"
    assert any(not torch.equal(after[3][k], after[2][k]) for k in after[3]), "the good step trained"
    assert trainer.global_step == 6, "a skipped step still consumes its batch and its place in the LR schedule"
    # Counted: as a metric, in the stage (saved in checkpoints) and in the log.
    assert weights.counted == [0, 1, 2, 2, 3, 4]
    assert stage.nonfinite.total == 5 and stage.nonfinite.streak == LIMIT
    skips = [r.getMessage() for r in caplog.records if r.name == "damo_lit.stages.base"]
    assert len(skips) == 5 and "(3 in a row, 5 in all; stage.max_nonfinite_steps=3)" in skips[-1]
    # The checkpoint to resume from holds the last good weights (those after call 3).
    saved = tmp_path / "checkpoints" / "nonfinite.ckpt"
    checkpoint = load_weights_only(saved)
    assert checkpoint["global_step"] == 6
    assert checkpoint["damo_resume"]["nonfinite"]["total"] == 5
    assert checkpoint["state_dict"].keys() == after[3].keys()
    for key, value in after[3].items():
        assert torch.equal(checkpoint["state_dict"][key], value), key
    assert not (tmp_path / "weights.safetensors").exists(), "a stopped run does not hand off to the next stage"


def test_damo_train_ends_a_nonfinite_streak_in_one_line_and_keeps_the_traceback(clean_root: Path,
                                                                              tmp_path: Path) -> None:
    """What the user reads: the message that says what to change, not Hydra's traceback; the
    traceback goes to RUN/error.txt and the checkpoint to resume from is saved."""
    overrides = run_overrides(clean_root, "trainer.max_epochs=3", "data.max_samples_per_split=12",
                              "callbacks.model_checkpoint=null", f"stage.max_nonfinite_steps={LIMIT}")  # fmt: skip
    stage, datamodule, trainer = build_run(compose_run("train", overrides, tmp_path))
    poison_losses(stage)
    with pytest.raises(SystemExit) as info, train_errors():
        fit(trainer, stage, datamodule, None)
    first, where = str(info.value).splitlines()
    assert first.startswith(f"damo-train: stage stage3: the loss was NaN or infinite for {LIMIT} steps in a row")
    assert "Resume from it with a lower stage.optimizer.lr" in first
    kept = tmp_path / "error.txt"
    assert where == f"(the traceback: {kept}; DAMO_TRACEBACK=1 shows it here)"
    assert kept.read_text().startswith("Traceback") and "NonFiniteLossError" in kept.read_text()
    assert (tmp_path / "checkpoints" / "nonfinite.ckpt").is_file()


def test_max_nonfinite_steps_must_be_positive(clean_root: Path, tmp_path: Path) -> None:
    cfg = compose_run("train", run_overrides(clean_root, "stage.max_nonfinite_steps=0"), tmp_path)
    with pytest.raises(Exception, match=r"stage\.max_nonfinite_steps must be >= 1, got 0"):  # (in Hydra's wrapper)
        build_run(cfg)


@pytest.mark.slow
def test_ddp_ranks_all_skip_a_step_that_one_rank_found_nonfinite(clean_root: Path, tmp_path: Path) -> None:
    """Two CPU DDP processes; rank 1 alone sees a NaN loss at its second step. Both ranks skip that
    optimizer step (their weights stay equal) and train on: Lightning refuses a training_step that
    returns None under DDP, so the guard must let backward run and drop the gradients instead."""
    script = Path(__file__).with_name("poisoned_train.py")
    overrides = run_overrides(clean_root, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3",
                              "data.max_samples_per_split=16", "callbacks.model_checkpoint=null")  # fmt: skip
    done = subprocess.run([sys.executable, str(script), f"hydra.run.dir={tmp_path}", *overrides], capture_output=True,
                          text=True, timeout=600, env={**subprocess_env(), "DAMO_POISON_CALLS": "1"})  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "step 1 has a non-finite loss on 1 of 2 rank(s)" in (tmp_path / "train.log").read_text()
    assert json.loads((tmp_path / "metrics.json").read_text())["train/nonfinite_steps"] == 1.0
    weights = load_file(str(tmp_path / "weights.safetensors"))  # the NaN gradients never reached them
    assert all(torch.isfinite(w).all() for w in weights.values())
