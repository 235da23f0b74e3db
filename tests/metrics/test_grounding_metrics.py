"""Grounding IoU and figures on hand-computed cases: either order, degenerate windows, None, modalities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from damo_lit.metrics import GroundingMetrics, GroundingScorer, best_iou, clean_span, modality_suffix


@pytest.mark.parametrize(
    "span, expected",
    [
        ((3, 5), (3.0, 5.0)),
        ([5.0, 3.0], (3.0, 5.0)),  # either order
        ((4, 4), None),  # zero length
        ((float("nan"), 2), None),
        ((1, float("inf")), None),
        (None, None),
        ((1,), None),
        ("ab", None),
        ({"start": 1}, None),
    ],
)
def test_clean_span(span, expected):
    assert clean_span(span) == expected


def test_best_iou_hand_computed():
    assert best_iou((1, 3), [(0, 2)]) == pytest.approx(1 / 3)
    assert best_iou((3, 1), [(0, 2)]) == pytest.approx(1 / 3)  # reversed prediction
    assert best_iou((2, 6), [(0, 1), (3, 7), (5, 6)]) == pytest.approx(3 / 5)  # best of several
    assert best_iou((0, 2), [(0, 4)]) == 0.5
    assert best_iou((5, 6), [(0, 2)]) == 0.0
    assert best_iou((0, 2), [(1, 1), (0, 2)]) == 1.0  # a degenerate ground-truth window is ignored
    assert best_iou(None, [(0, 2)]) == 0.0
    assert best_iou((0, 2), []) == 0.0


PREDS = [(1, 3), (5, 2), None, (4, 4), (float("nan"), 2), (0, 2)]
GTS = [[(0, 2)], [(2, 5), (0, 1)], [(0, 1)], [(3, 5)], [(0, 2)], [(0, 4)]]
MODS = ["audio", "visual", None, "audio-visual", "Audio", "visual"]
# IoUs: 1/3, 1, 0 (None), 0 (zero length), 0 (NaN), 0.5 (exactly on the threshold)


def test_grounding_metrics_hand_computed():
    metric = GroundingMetrics()
    metric.update(PREDS, GTS, MODS)
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["count"] == 6
    assert out["R@0.3"] == pytest.approx(3 / 6)
    assert out["R@0.5"] == pytest.approx(2 / 6)  # IoU 0.5 counts at R@0.5
    assert out["R@0.7"] == pytest.approx(1 / 6)
    assert out["mIoU"] == pytest.approx((1 / 3 + 1 + 0.5) / 6)
    assert out["parse_rate"] == pytest.approx(3 / 6)  # None, (4, 4) and NaN are not usable windows
    assert out["count_audio"] == 2 and out["R@0.3_audio"] == pytest.approx(0.5)
    assert out["mIoU_audio"] == pytest.approx(1 / 6)
    assert out["count_visual"] == 2 and out["R@0.5_visual"] == 1.0 and out["R@0.7_visual"] == 0.5
    assert out["mIoU_visual"] == pytest.approx(0.75)
    assert out["count_audio-visual"] == 1 and out["mIoU_audio-visual"] == 0.0


def test_modality_keys_only_for_modalities_present():
    metric = GroundingMetrics()
    metric.update([(0, 1)], [[(0, 1)]], ["audio"])
    keys = set(metric.compute())
    assert "R@0.5_audio" in keys and "mIoU_audio" in keys
    assert not any(k.endswith("_visual") or k.endswith("_audio-visual") for k in keys)
    metric = GroundingMetrics()
    metric.update([(0, 1)], [[(0, 1)]])  # no modalities at all
    assert set(metric.compute()) == {"R@0.3", "R@0.5", "R@0.7", "mIoU", "count", "parse_rate"}


def test_modality_suffix_and_unknown_tags():
    assert modality_suffix("audio-visual") == "_audio-visual"
    assert modality_suffix("Audio Visual") == "_audio-visual"
    assert modality_suffix("audio_visual") == "_audio-visual"
    metric = GroundingMetrics()
    with pytest.raises(ValueError, match="unknown modality 'speech'"):
        metric.update([(0, 1)], [[(0, 1)]], ["speech"])
    custom = GroundingMetrics(thresholds=(0.5,), modalities=("speech", "music"))
    custom.update([(0, 1), (0, 1)], [[(0, 2)], [(0, 1)]], ["Speech", "music"])
    out = custom.compute()
    assert set(out) >= {"R@0.5_speech", "R@0.5_music"} and float(out["R@0.5_speech"]) == 1.0
    with pytest.raises(ValueError, match="clashing"):
        GroundingScorer(modalities=("audio visual", "audio-visual"))
    with pytest.raises(ValueError, match="thresholds"):
        GroundingScorer(thresholds=(0.0,))


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="pred_spans has 2 entries but gt_spans has 1"):
        GroundingMetrics().update([(0, 1), (0, 1)], [[(0, 1)]])


def test_batches_accumulate_and_reset():
    rng = np.random.default_rng(0)
    starts = rng.uniform(0, 10, size=(50, 2))
    preds = [tuple(s) if i % 7 else None for i, s in enumerate(starts)]
    gts = [[(float(a), float(a) + 3.0)] for a in rng.uniform(0, 10, size=50)]
    mods = [("audio", "visual", "audio-visual", None)[i % 4] for i in range(50)]
    whole = GroundingMetrics()
    whole.update(preds, gts, mods)
    batched = GroundingMetrics()
    for lo in range(0, 50, 8):
        batched.update(preds[lo : lo + 8], gts[lo : lo + 8], mods[lo : lo + 8])
    a, b = whole.compute(), batched.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    scorer = GroundingScorer()
    direct = scorer.summarize(scorer.score_queries(preds, gts, mods))
    assert {k: pytest.approx(v, rel=1e-6) for k, v in direct.items()} == {k: float(v) for k, v in a.items()}
    batched.reset()
    batched.update([(0, 1)], [[(0, 1)]])
    assert float(batched.compute()["count"]) == 1


def test_empty_metric_gives_nan_rates():
    scorer = GroundingScorer()
    out = scorer.summarize(scorer.score_queries([], []))
    assert out["count"] == 0 and math.isnan(out["R@0.5"]) and math.isnan(out["mIoU"])


def test_best_relative_span_is_the_constant_guess_with_the_most_hits() -> None:
    """Events that start anywhere: the mean relative span (0.5 wide, centred) hits few of them,
    the fitted span hits the most. IoU is taken in seconds, as the metric takes it."""
    from damo_lit.data.datamodule import SpanPrior
    from damo_lit.metrics.spans import best_relative_span, temporal_iou

    durations = [10.0, 20.0, 10.0, 10.0, 40.0, 10.0]
    spans = [(0.0, 2.0), (0.0, 4.0), (0.0, 2.5), (8.0, 10.0), (0.0, 8.0), (4.0, 6.0)]  # five of six at the start
    best = best_relative_span(spans, durations)
    hits = lambda rel: sum(  # noqa: E731
        temporal_iou([[rel[0] * d, rel[1] * d]], [span])[0, 0] >= 0.5 for span, d in zip(spans, durations))
    grid = [(s / 20, e / 20) for s in range(21) for e in range(21) if e > s]
    assert hits(best) == max(hits(c) for c in grid) == 4
    assert best == (0.0, 0.15), "the earliest of the spans with the most hits ((0, 0.1) hits three)"
    prior = SpanPrior.fit(spans, durations)
    assert (prior.best_start, prior.best_end) == best and prior.count == 6
    assert hits((prior.start, prior.end)) < hits(best)
    with pytest.raises(ValueError, match="no spans"):
        best_relative_span([], [])
