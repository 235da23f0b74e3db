"""The shuffle test: does a model's answer to an audio-only query depend on the video it was asked about?

The constant-span check of the ablations compares the no-audio model with the mean span, which is
a poor blind guess on the synthetic set; a model can learn a better one from the training
answers alone. The shuffle test needs no prior: it takes the spans a model gave on the audio-only
test queries, as shares of each video's length, and hands them to the other audio-only queries
(random permutations). A model that reads the answer from the media loses R@0.5 when its answers
go to other videos; one that learned a blind prior (or guesses) loses nothing. If the no-audio
model lost much, the picture would be giving the audio answers away.

The predictions come from damo-eval over the test split's grounding queries, run once per run
folder into RUN/eval_test/ (predictions.jsonl: pred_spans, gt_spans, duration, modality).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from damo_lit.cli.common import overrides_under
from damo_lit.metrics.spans import best_iou

SHUFFLES = 200
THRESHOLD = 0.5
EVAL_DIR = "eval_test"
# The overrides of a run that damo-eval's config understands (where the data is).
EVAL_KEYS = ("data", "paths")


@dataclass
class ShuffleResult:
    """R@0.5 of a model's own answers on one kind of query, and of the same answers shuffled."""

    queries: int
    own: float  # R@0.5 of each query's own answer
    shuffled: float  # mean R@0.5 over SHUFFLES permutations of the answers between queries
    shuffled_p95: float  # 95th percentile of the shuffled R@0.5: chance reaches this 1 time in 20

    @property
    def drop(self) -> float:
        return self.own - self.shuffled


def _relative(row: Mapping[str, Any]) -> tuple[float, float] | None:
    spans, duration = row.get("pred_spans") or [], float(row.get("duration") or 0.0)
    if not spans or duration <= 0:
        return None
    start, end = spans[0][:2]
    return float(start) / duration, float(end) / duration


def _recall(answers: Sequence[tuple[float, float] | None], rows: Sequence[Mapping[str, Any]]) -> float:
    hits = 0
    for answer, row in zip(answers, rows):
        if answer is not None:
            duration = float(row["duration"])
            hits += best_iou((answer[0] * duration, answer[1] * duration), row["gt_spans"]) >= THRESHOLD
    return hits / len(rows)


def shuffle_test(rows: Sequence[Mapping[str, Any]], modality: str = "audio", shuffles: int = SHUFFLES,
                 seed: int = 0) -> ShuffleResult | None:
    """The shuffle test on the rows of `modality` (None when there are fewer than two)."""
    mine = [r for r in rows if r.get("modality") == modality]
    if len(mine) < 2:
        return None
    answers = [_relative(r) for r in mine]
    rng = np.random.default_rng(seed)
    shuffled = [_recall([answers[i] for i in rng.permutation(len(mine))], mine) for _ in range(shuffles)]
    return ShuffleResult(len(mine), _recall(answers, mine), float(np.mean(shuffled)),
                         float(np.percentile(shuffled, 95)))  # fmt: skip


def read_predictions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def eval_command(stage_dir: Path, out: Path, overrides: Sequence[str], limit: int | None) -> list[str]:
    """damo-eval of a run's final stage over the test grounding queries (tests replace this)."""
    keep = overrides_under(overrides, EVAL_KEYS)
    return [sys.executable, "-m", "damo_lit.cli.eval", f"ckpt={stage_dir}", "split=test", "tasks=[grounding]",
            f"out={out}", "accelerator=cpu", *([f"limit={limit}"] if limit else []), *keep]  # fmt: skip


def predictions_of(run_dir: Path, final_stage: str, overrides: Sequence[str], limit: int | None = None,
                   run: bool = True) -> Path | None:
    """RUN/eval_test/predictions.jsonl, made with damo-eval when absent (and `run`); None when the
    run has no weights to evaluate or damo-eval failed (its log is RUN/eval_test/eval.log)."""
    out = run_dir / EVAL_DIR
    predictions = out / "predictions.jsonl"
    if predictions.is_file() or not run:
        return predictions if predictions.is_file() else None
    stage_dir = run_dir / final_stage
    if not (stage_dir / "weights.safetensors").is_file():
        return None
    out.mkdir(parents=True, exist_ok=True)
    cmd = eval_command(stage_dir, out, overrides, limit)
    print(f"shuffle test: damo-eval of {stage_dir} -> {out}", flush=True)
    with (out / "eval.log").open("w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if code != 0 or not predictions.is_file():
        print(f"shuffle test: damo-eval failed (exit code {code}); see {out / 'eval.log'}", file=sys.stderr)
        predictions.unlink(missing_ok=True)
        return None
    return predictions
