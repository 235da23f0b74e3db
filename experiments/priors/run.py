"""What a model that ignores the media can reach: picture- and sound-free span priors, scored on
the test split by modality, from the annotations alone (no model, a few seconds).

Four priors, each fitted on the training split's grounding records:
  constant  the training set's mean relative span (the runs' own `test/baseline_R@0.5`);
  typical   a span of the mean event length in seconds at the mean relative centre;
  best      the one relative span (on a 0.05 grid) with the best training R@0.5, for every video:
            the mean span is not the best constant guess;
  duration  the same per quarter of the training durations: what a model can learn from the
            video's length alone.
A model must beat the strongest of them before it can claim to ground anything, and a model
without audio may reach the `best` and `duration` priors on audio-only queries without any leak
(a constant guess needs no media, and it knows the video's length from its frame times).

Usage: python experiments/priors/run.py [--root DIR] [--out DIR]   (make exp-priors)
Writes OUT/results.md and OUT/results.json (default OUT: outputs/experiments/priors).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from damo_lit.data.schema import Record, read_jsonl  # noqa: E402
from damo_lit.metrics.spans import best_iou, best_relative_span  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7)
DURATION_BINS = 4

Prior = Callable[[float], tuple[float, float]]


@dataclass(frozen=True)
class Query:
    duration: float
    span: tuple[float, float]
    modality: str


def grounding_queries(path: Path) -> list[Query]:
    """The first span of every grounding record of a DaMO JSONL file (a bad line is an error)."""
    queries = []
    for lineno, record in read_jsonl(path):
        if not isinstance(record, Record):
            raise SystemExit(f"{path}:{lineno}: {record} (damo-data validate lists every bad line)")
        if record.task == "grounding" and record.spans:
            queries.append(Query(record.duration, tuple(map(float, record.spans[0])), record.modality or "any"))
    return queries


def recall(prior: Prior, queries: Sequence[Query], threshold: float = 0.5) -> float:
    if not queries:
        return float("nan")
    return float(np.mean([best_iou(prior(q.duration), [q.span]) >= threshold for q in queries]))


def constant_prior(train: Sequence[Query]) -> Prior:
    rel = np.array([[q.span[0] / q.duration, q.span[1] / q.duration] for q in train])
    start, end = rel.mean(0)
    return lambda d: (start * d, end * d)


def typical_prior(train: Sequence[Query]) -> Prior:
    centre = float(np.mean([(q.span[0] + q.span[1]) / 2 / q.duration for q in train]))
    length = float(np.mean([q.span[1] - q.span[0] for q in train]))
    return lambda d: (max(0.0, centre * d - length / 2), min(d, centre * d + length / 2))


def duration_prior(train: Sequence[Query], bins: int = DURATION_BINS) -> Prior:
    """Best relative span on the grid per duration bin (quantiles of the training durations;
    bins=1: one span for every video)."""
    edges = np.quantile([q.duration for q in train], np.linspace(0, 1, bins + 1)[1:-1])
    best: list[tuple[float, float]] = []
    for b in range(bins):
        group = [q for q in train if int(np.searchsorted(edges, q.duration, side="right")) == b]
        best.append(best_relative_span([q.span for q in group], [q.duration for q in group]) if group else (0.0, 1.0))

    def prior(d: float) -> tuple[float, float]:
        s, e = best[int(np.searchsorted(edges, d, side="right"))]
        return s * d, e * d

    return prior


def score(priors: dict[str, Prior], test: Sequence[Query]) -> dict[str, dict[str, float]]:
    modalities = sorted({q.modality for q in test})
    out: dict[str, dict[str, float]] = {}
    for name, prior in priors.items():
        row = {f"R@{t}": recall(prior, test, t) for t in THRESHOLDS}
        row.update({f"R@0.5_{m}": recall(prior, [q for q in test if q.modality == m]) for m in modalities})
        out[name] = row
    return out


def table(results: dict[str, dict[str, float]]) -> str:
    columns = list(next(iter(results.values())))
    lines = ["| prior | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |" for name, row in results.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT / "outputs" / "data" / "synthetic",
                        help="a folder with annotations/{train,test}.jsonl (default: the embedded synthetic set)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "experiments" / "priors")
    args = parser.parse_args(argv)
    files = {split: args.root / "annotations" / f"{split}.jsonl" for split in ("train", "test")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        parser.error(f"no annotations at {', '.join(missing)} (make demo generates the synthetic set)")
    train, test = grounding_queries(files["train"]), grounding_queries(files["test"])
    if not train or not test:
        parser.error(f"{args.root}: need grounding records in both the train and the test split")
    priors = {"constant": constant_prior(train), "typical": typical_prior(train),
              "best": duration_prior(train, bins=1), "duration": duration_prior(train)}
    results = score(priors, test)
    text = (f"Span priors on {args.root} (fitted on {len(train)} training queries, scored on {len(test)} test "
            f"queries; no model):\n\n{table(results)}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)
    print(f"wrote {args.out / 'results.md'} and results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
