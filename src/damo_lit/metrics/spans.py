"""Temporal spans: cleaning a predicted window and its IoU against ground truth.

One place decides what a usable window is, so that the grounding metric, damo-score and the
timeline picture agree on every query: a window is two finite numbers, taken in either order
(a model that writes "from 7 to 3 s" meant 3 to 7 s), with a positive length. Anything else
(None, NaN, infinity, zero length, not two numbers) is not a window and scores IoU 0.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

Span = tuple[float, float]


def clean_span(span: Any) -> Span | None:
    """(start, end) sorted ascending, or None when `span` is not a usable window."""
    if span is None:
        return None
    try:
        if len(span) < 2:
            return None
        a, b = float(span[0]), float(span[1])
    except (TypeError, ValueError, KeyError, IndexError):
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        return None
    start, end = (a, b) if a <= b else (b, a)
    if end - start <= 0.0:
        return None
    return start, end


def temporal_iou(spans1: np.ndarray, spans2: np.ndarray) -> np.ndarray:
    """IoU of every window in `spans1` (N, 2) with every window in `spans2` (M, 2): (N, M).

    Intersection over the true union (length1 + length2 - intersection); windows are taken as
    given (no sorting), which is what the QVHighlights evaluator does. A pair without a positive
    union (two empty windows at one point, or reversed windows) gives 0, where the evaluator gives
    NaN: NaN fails every `iou < threshold` test, so a matcher written that way would take it for
    a hit at every threshold.
    """
    spans1 = np.asarray(spans1, dtype=np.float64).reshape(-1, 2)
    spans2 = np.asarray(spans2, dtype=np.float64).reshape(-1, 2)
    len1 = spans1[:, 1] - spans1[:, 0]
    len2 = spans2[:, 1] - spans2[:, 0]
    left = np.maximum(spans1[:, None, 0], spans2[None, :, 0])
    right = np.minimum(spans1[:, None, 1], spans2[None, :, 1])
    inter = np.clip(right - left, 0.0, None)
    union = len1[:, None] + len2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def best_iou(pred: Any, gt_spans: Sequence[Any]) -> float:
    """IoU of one predicted window with the ground-truth window it matches best (0 when unusable).

    Both sides go through `clean_span`: an unusable prediction, or a query whose ground-truth
    windows are all unusable, scores 0 instead of raising.
    """
    span = clean_span(pred)
    gts = [g for g in (clean_span(g) for g in gt_spans) if g is not None]
    if span is None or not gts:
        return 0.0
    return float(temporal_iou(np.array([span]), np.array(gts)).max())


PRIOR_GRID_STEP = 0.05  # relative spans tried by `best_relative_span`: starts and ends 0, 0.05, ..., 1


def best_relative_span(spans: Sequence[Span], durations: Sequence[float], threshold: float = 0.5,
                       step: float = PRIOR_GRID_STEP) -> Span:
    """The one relative span (start and end as shares of the video's length, on a `step` grid of
    0..1) that reaches IoU >= `threshold` with the most of `spans` (in seconds, in videos of
    `durations` seconds; the IoU is taken in seconds, as the grounding metric takes it; ties: the
    earliest on the grid, starts first). The strongest constant guess: the mean span is not, when
    events start anywhere in a video, since a span centred on the mean then misses most of them."""
    if not len(spans):
        raise ValueError("best_relative_span: no spans to fit")
    grid = np.round(np.arange(0.0, 1.0 + step / 2, step), 6)
    starts, ends = np.meshgrid(grid, grid, indexing="ij")
    keep = ends > starts
    rel_start, rel_end = starts[keep][:, None], ends[keep][:, None]  # (C, 1)
    gt = np.asarray(spans, dtype=np.float64)
    d = np.asarray(durations, dtype=np.float64)[None, :]
    left, right = np.maximum(rel_start * d, gt[None, :, 0]), np.minimum(rel_end * d, gt[None, :, 1])
    inter = np.clip(right - left, 0.0, None)
    union = (rel_end - rel_start) * d + (gt[None, :, 1] - gt[None, :, 0]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        hits = (np.nan_to_num(inter / union) >= threshold).sum(1)
    best = int(np.argmax(hits))
    return float(rel_start[best, 0]), float(rel_end[best, 0])
