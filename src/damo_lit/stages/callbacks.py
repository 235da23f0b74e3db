"""Callbacks every stage run uses: the stage's lean weights and LoRA adapter at the end of fit,
the report of videos that failed to decode and of annotation records dropped, and a checkpoint
to resume from when fit stops early (preemption, a run of non-finite losses)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from damo_lit.data.datamodule import NoSamplesError
from damo_lit.data.sources.base import describe_fixes
from damo_lit.stages.base import NonFiniteLossError
from damo_lit.stages.fsdp import uses_fsdp
from damo_lit.stages.weights import clean_name, save_stage_weights, stage_state

log = logging.getLogger(__name__)



class StageArtifacts(L.Callback):
    """At the end of fit, write DIR/weights.safetensors + DIR/stage.json (what the next stage's
    `stage.init_from=DIR` reads) and, when LoRA is on, DIR/adapter in peft's own format."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            raise ValueError(
                "fit trained 0 steps, so no stage weights are written (they would be the initial ones, which the "
                f"next stage would take for trained): check trainer.max_steps ({trainer.max_steps}), "
                f"trainer.max_epochs ({trainer.max_epochs}) and trainer.limit_train_batches "
                f"({trainer.limit_train_batches})"
            )
        root = trainer.strategy.model if uses_fsdp(trainer) else None
        state = stage_state(pl_module.model, pl_module.persistent_names(), root)  # collective under FSDP
        if not trainer.is_global_zero:
            return
        path = save_stage_weights(self.dirpath, state, {**pl_module.stage_meta(), "steps": trainer.global_step})
        size_mb = path.stat().st_size / 2**20
        log.info("stage weights: %s (%.1f MB, %d tensors)", path, size_mb, len(state))
        if "lora" in pl_module.trainable_groups and pl_module.model.llm.lora_parameters():
            save_adapter(pl_module.model, state, str(self.dirpath / "adapter"))


def save_adapter(model: Any, state: dict[str, Any], path: str) -> None:
    """The LoRA adapter in peft's format, from the gathered stage state (the peft model's own
    state_dict would be collective under FSDP, and this runs on rank 0 only)."""
    peft_model = model.llm.model
    prefix = next(clean_name(n) for n, m in model.named_modules() if m is peft_model) + "."
    lora = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and "lora_" in k}
    model.llm.save_lora(path, state_dict=lora)


class DecodeFailureReport(L.Callback):
    """At the end of each training epoch: how many video files failed to decode (and were skipped)
    and which, and how many annotation records the sources dropped or fixed.

    Logs `train/decode_failures` (distinct files, all splits loaded so far), `train/skipped_samples`
    (samples left out because of them, cumulative) and `train/records_dropped`; names in the log,
    with its reason, every file that failed since the last report (so each bad file is named once
    however many there are, and later epochs only count them), and writes all of them to
    `DIR/decode_failures.json` (DIR: `dirpath`, else the trainer's default_root_dir). Failures found
    outside of a training epoch (a fit that trained no batch, testing, a run stopped by an error) are
    written and named at the end of fit or test, or at the error. Record fix-ups are named once, when
    fit starts.

    A first training epoch in which every batch was empty (no video of any decoded: Lightning skips
    such batches, and a step-limited run would loop over epochs for ever) stops fit with
    NoSamplesError, after the report. An epoch with no batch at all (a run resumed at an epoch's
    end) is not one.
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = Path(dirpath) if dirpath else None
        self.named: set[str] = set()  # files already named in the log
        self.batches = [0, 0]  # training batches of this rank in this fit: [trained, empty (None: skipped)]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches = [0, 0]
        fixes = getattr(trainer.datamodule, "fixes", None)
        if fixes is None or not trainer.is_global_zero:
            return
        for split, counts in fixes().items():
            done = describe_fixes(counts)
            if done:
                log.warning("data %s: annotation fix-ups and drops: %s", split, done)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.batches[1 if batch is None else 0] += 1  # Lightning skips a None batch (every sample failed)

    def _target(self, trainer: L.Trainer) -> Path:
        return (self.dirpath or Path(trainer.default_root_dir)) / "decode_failures.json"

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> None:
        datamodule = trainer.datamodule
        failures_of = getattr(datamodule, "decode_failures", None)
        if failures_of is None:
            return
        failures: dict[str, list[str]] = failures_of()
        skipped = sum(len(v) for v in failures.values())
        dropped = sum(n for counts in datamodule.fixes().values() for k, n in counts.items()
                      if k.startswith("record_")) if hasattr(datamodule, "fixes") else 0  # fmt: skip
        values = {"decode_failures": len(failures), "skipped_samples": skipped, "records_dropped": dropped}
        for key, value in values.items():
            pl_module.log(f"{split}/{key}", float(value), rank_zero_only=True, batch_size=1)
        self._write(trainer, f"{split} epoch {trainer.current_epoch}", failures)

    def _write(self, trainer: L.Trainer, when: str, failures: dict[str, list[str]] | None = None) -> None:
        """Write every failure so far to decode_failures.json and name the new ones; nothing when no
        file failed, or (outside of an epoch's report) when none is new."""
        if failures is None:
            failures_of = getattr(trainer.datamodule, "decode_failures", None)
            failures = failures_of() if failures_of is not None else {}
            if set(failures) <= self.named:
                return
        if not failures or not trainer.is_global_zero:
            return
        named = sorted(failures.items())
        skipped = sum(len(v) for v in failures.values())
        target = self._target(trainer)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({path: reasons[0] for path, reasons in named}, indent=2) + "\n")
        new = [(path, reasons) for path, reasons in named if path not in self.named]
        self.named.update(path for path, _ in new)
        lines = "".join(f"\n  {path}: {reasons[0]}" + (f" ({len(reasons)} samples)" if len(reasons) > 1 else "")
                        for path, reasons in new)  # fmt: skip
        log.warning("%s: %d video file(s) failed to decode, %d new since the last report; %d sample(s) "
                    "skipped so far (all in %s)%s", when, len(failures), len(new), skipped, target, lines)  # fmt: skip

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")
        # every rank decides together (a rank that raised alone would leave the others waiting)
        trained, empty = trainer.strategy.reduce(torch.tensor(self.batches, dtype=torch.float32,
                                                              device=pl_module.device), reduce_op="sum").tolist()
        if trained == 0 and empty > 0:
            raise NoSamplesError(
                f"no training sample could be decoded: every batch of epoch {trainer.current_epoch} was empty "
                f"(the files that failed, and why: {self._target(trainer)})"
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "fit")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, "test")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write(trainer, f"stopped by {type(exception).__name__}")


class StageProgressBar(RichProgressBar):
    """Lightning's RichProgressBar, whose epoch reads `Epoch N/max_epochs-1`: a step-limited run
    (max_epochs=-1, as the experiments set it) showed `Epoch 0/-2`. Such a run shows the epoch and
    the step budget instead."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch}" + (f" (max_steps {trainer.max_steps})" if trainer.max_steps >= 0 else "")
        return f"{text:{len(self.validation_description)}}"  # padded as Lightning pads it (no flicker)


class InterruptCheckpoint(L.Callback):
    """A checkpoint to resume from when fit stops early: on SIGTERM (preemption; Lightning stops
    after the current batch) DIR/preempted.ckpt, on a first Ctrl-C (SIGINT, taken as SIGTERM is:
    after the current batch) DIR/interrupted.ckpt, and on NonFiniteLossError DIR/nonfinite.ckpt
    (the weights of the last good step: non-finite steps never updated them). A second Ctrl-C
    stops at once, as Lightning does, without a checkpoint.

    Every rank gets here together (the SIGTERM flag, which a terminal's Ctrl-C sets on every rank,
    and the non-finite flag are shared across ranks), which the collective save needs. `saved`
    holds the path written, if any; `interrupted` is true after a Ctrl-C.
    """

    FILES: tuple[tuple[type[BaseException], str, str], ...] = (
        (SIGTERMException, "preempted.ckpt", "SIGTERM (preemption)"),
        (NonFiniteLossError, "nonfinite.ckpt", "non-finite losses"),
    )
    CTRL_C = ("interrupted.ckpt", "Ctrl-C")

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None
        self.interrupted = False
        self._previous_sigint: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread

        def first_ctrl_c(signum: int, frame: Any) -> None:
            self.interrupted = True
            # Lightning stops after the current batch, as for SIGTERM (Trainer.received_sigterm reads
            # its signal connector's flag, which the connector's own SIGTERM handler sets)
            trainer._signal_connector.received_sigterm = True
            self._restore_sigint()  # a second press raises KeyboardInterrupt at once
            if trainer.is_global_zero:
                log.warning("Ctrl-C: stopping after the current step to save a checkpoint (press again to stop now)")

        self._previous_sigint = signal.signal(signal.SIGINT, first_ctrl_c)

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if trainer.state.fn != TrainerFn.FITTING:
            return
        match = next(((name, why) for kind, name, why in self.FILES if isinstance(exception, kind)), None)
        if match is None:
            return
        name, why = self.CTRL_C if self.interrupted and isinstance(exception, SIGTERMException) else match
        path = self.dirpath / name
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, to resume from
        self.saved = path
        if trainer.is_global_zero:
            log.warning("training stopped by %s at step %d (epoch %d): saved %s; resume with resume_from=%s",
                        why, trainer.global_step, trainer.current_epoch, path, path)


def interrupted_by_user(trainer: L.Trainer) -> bool:
    """True when fit stopped on a Ctrl-C that an InterruptCheckpoint of this trainer took."""
    return any(isinstance(cb, InterruptCheckpoint) and cb.interrupted for cb in trainer.callbacks)


def interrupt_checkpoint(trainer: L.Trainer) -> Any:
    """The path an InterruptCheckpoint of this trainer saved, or None."""
    return next((cb.saved for cb in trainer.callbacks if isinstance(cb, InterruptCheckpoint) and cb.saved), None)
