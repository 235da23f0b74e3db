"""Progress for terminals and for log files.

Rich's bar redraws one line in a terminal; where stderr is a file (a cluster job's log, `2> log`)
it shows nothing until the loop ends, so an hours-long run or evaluation looked dead.
`progress_bar()` gives Rich's bar to a terminal and `LineProgressBar` to a file: a plain line
every `every_s` seconds and one at the end of each loop, with the rate and the time left.
"""

from __future__ import annotations

import math
import sys
import time
from functools import partialmethod
from typing import Any, Callable, TextIO

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

STYLES = ("auto", "rich", "lines")


def progress_bar(style: str = "auto", every_s: float = 30.0, leave: bool = True, stderr: bool = False) -> ProgressBar:
    """The progress bar for this process: `rich` (a terminal's live bar), `lines` (plain lines, for
    log files) or `auto` (rich when the stream it draws on is a terminal). `stderr`: draw on stderr
    (commands whose stdout carries their result)."""
    from damo_lit.stages.callbacks import StageProgressBar

    if style not in STYLES:
        raise ValueError(f"callbacks.progress_bar.style must be one of {', '.join(STYLES)}, got {style!r}")
    stream = sys.stderr if stderr else sys.stdout
    if style == "rich" or (style == "auto" and stream.isatty()):
        return StageProgressBar(leave=leave, console_kwargs={"stderr": True} if stderr else None)
    return LineProgressBar(every_s=every_s, stream=stream)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class LineProgressBar(ProgressBar):
    """Progress as lines of text: `Epoch 0 | step 120/600 (20%) | 1.9 it/s | 1:03 elapsed, 4:12 left |
    train/loss 2.31`, at most one every `every_s` seconds per loop, plus one when a loop ends. Only
    rank 0 writes."""

    def __init__(self, every_s: float = 30.0, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_s < 0:
            raise ValueError(f"callbacks.progress_bar.every_s must be >= 0, got {every_s}")
        self.every_s = float(every_s)
        self.stream = stream
        self._enabled = True
        self._started: dict[str, tuple[float, int]] = {}  # loop -> (start time, count at start)
        self._last: dict[str, float] = {}
        self._epoch = 0
        self._done = 0  # batches of the evaluation loop in progress

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    # -- writing ---------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, file=self.stream or sys.stdout, flush=True)

    def _start(self, loop: str, count: int = 0) -> None:
        now = time.monotonic()
        self._started[loop] = (now, count)
        self._last[loop] = now

    def _line(self, loop: str, what: str, unit: str, done: int, total: float | int | None,
              extra: Callable[[], str] | None = None, final: bool = False) -> None:
        """Write a line when `every_s` has passed (or `final`); `extra` (the metrics) is only
        gathered for a line that is written, not at every step."""
        now = time.monotonic()
        if not final and now - self._last.get(loop, 0.0) < self.every_s:
            return
        self._last[loop] = now
        start, first = self._started.get(loop, (now, 0))
        elapsed = now - start
        rate = (done - first) / elapsed if elapsed > 0 else 0.0
        known = total is not None and math.isfinite(total) and total > 0
        parts = [what, f"{unit}{done}/{int(total)} ({100 * done / total:.0f}%)" if known else f"{unit}{done}",
                 f"{rate:.2f} it/s"]
        timing = f"{_clock(elapsed)} elapsed"
        if known and not final and rate > 0:
            timing += f", {_clock(max(0.0, total - done) / rate)} left"
        parts.append(timing + (" (done)" if final else ""))
        shown = extra() if extra is not None else ""
        if shown:
            parts.append(shown)
        self._write(" | ".join(parts))

    def _metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        shown = []
        for key, value in self.get_metrics(trainer, pl_module).items():
            if key == "v_num" or "loss" not in key:
                continue
            shown.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return ", ".join(shown)

    # -- training: steps against trainer.max_steps (or the epoch's batches) -------------------------
    def _train_total(self, trainer: L.Trainer) -> float | None:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return trainer.max_steps
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return self.total_train_batches * trainer.max_epochs
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("train", trainer.global_step)
        self._epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._epoch = trainer.current_epoch  # at fit's end the counter has moved past the last epoch
        self._line("train", f"Epoch {self._epoch}", "step ", trainer.global_step,
                   self._train_total(trainer), lambda: self._metrics(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._line("train", f"Epoch {self._epoch}", "step ", trainer.global_step,
                   self._train_total(trainer), lambda: self._metrics(trainer, pl_module), final=True)

    # -- validation, test, predict: batches of the loop --------------------------------------------
    # loop -> the base class's (description, batch total) attributes for it
    EVAL_LOOPS = {"validate": ("validation_description", "total_val_batches"),
                  "test": ("test_description", "total_test_batches_current_dataloader"),
                  "predict": ("predict_description", "total_predict_batches_current_dataloader")}

    def _on_eval(self, loop: str, event: str, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any,
                 **kwargs: Any) -> None:
        """One hook of an evaluation loop (`event`: start, batch_start, batch or end)."""
        if loop == "validate" and trainer.sanity_checking:
            return
        if event == "start":
            self._start(loop)
            self._done = 0
            return
        if event == "batch_start":  # the base class's "current dataloader", for its totals
            self.has_dataloader_changed(kwargs.get("dataloader_idx", args[2] if len(args) > 2 else 0))
            return
        if event == "batch":
            self._done += 1
        what, total = (getattr(self, name) for name in self.EVAL_LOOPS[loop])
        self._line(loop, what, "batch ", self._done, total, final=event == "end")


# Lightning's hooks of the three evaluation loops, all served by LineProgressBar._on_eval.
for _loop, _prefix in (("validate", "validation"), ("test", "test"), ("predict", "predict")):
    for _event, _suffix in (("start", "start"), ("batch_start", "batch_start"), ("batch", "batch_end"), ("end", "end")):
        setattr(LineProgressBar, f"on_{_prefix}_{_suffix}", partialmethod(LineProgressBar._on_eval, _loop, _event))
