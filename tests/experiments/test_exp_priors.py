"""experiments/priors: span priors from the annotations alone, scored on the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from exp_helpers import load_runner

from damo_lit.data.schema import write_jsonl
from damo_lit.data.synthetic import SynthConfig, annotate, plan_split


def _annotations(root: Path) -> None:
    """Annotations of a synthetic set without rendering a single video."""
    cfg = SynthConfig(videos=200, seed=4)
    for split, count in (("train", 160), ("test", 40)):
        plans = plan_split(cfg, split, count)
        write_jsonl(root / "annotations" / f"{split}.jsonl", [r for p in plans for r in annotate(p, cfg.seed)])


def test_priors_are_scored_per_modality_and_the_constant_one_is_the_mean_span(tmp_path: Path, capsys) -> None:
    priors = load_runner("priors")
    _annotations(tmp_path)
    assert priors.main(["--root", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) == {"constant", "typical", "best", "duration"}
    for row in results.values():
        assert {"R@0.3", "R@0.5", "R@0.7", "R@0.5_audio", "R@0.5_visual", "R@0.5_audio-visual"} <= set(row)
        assert all(0.0 <= v <= 1.0 for v in row.values())
        assert row["R@0.3"] >= row["R@0.5"] >= row["R@0.7"]
    # the constant prior by hand: the mean relative span of the training queries
    train = priors.grounding_queries(tmp_path / "annotations" / "train.jsonl")
    test = priors.grounding_queries(tmp_path / "annotations" / "test.jsonl")
    start = np.mean([q.span[0] / q.duration for q in train])
    end = np.mean([q.span[1] / q.duration for q in train])
    hits = [priors.best_iou((start * q.duration, end * q.duration), [q.span]) >= 0.5 for q in test]
    assert results["constant"]["R@0.5"] == pytest.approx(np.mean(hits))
    # the duration prior is fitted to beat the others on the training queries
    fitted = {name: priors.recall(make(train), train) for name, make in
              (("constant", priors.constant_prior), ("best", lambda t: priors.duration_prior(t, bins=1)),
               ("duration", priors.duration_prior))}
    assert fitted["duration"] >= fitted["best"] >= fitted["constant"]
    assert "| duration |" in capsys.readouterr().out


def test_priors_name_missing_annotations(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        load_runner("priors").main(["--root", str(tmp_path)])
    assert "no annotations at" in capsys.readouterr().err
