"""QVHighlights moment retrieval (MR) and highlight detection (HL), as the official evaluator scores them.

Numbers that papers compare against come from Moment-DETR's standalone evaluator
(jayleicn/moment_detr, standalone_eval/eval.py). This is an independent implementation of its
definitions, checked leaf by leaf against the evaluator's own output on its sample predictions
(tests/metrics/test_qvhighlights.py):

- MR-R1@t: the top-1 predicted window is scored against the ground-truth window it overlaps
  most; a hit when IoU >= t, for t in 0.5:0.05:0.95.
- MR-mAP@t: per query, the first 10 predicted windows (sorted by score, ties in file order) are
  matched greedily to ground-truth windows (each window at most once, best IoU first) and AP
  is the VOC-2011 interpolated area under precision/recall; mAP is the mean over queries that
  have at least one predicted window; "average" is the mean over the ten thresholds.
- short / middle / long: only the ground-truth windows whose length lies in (0, 10], (10, 30]
  or (30, 150] seconds are kept, and only queries left with one; "full" keeps everything.
- HL at Fair / Good / VeryGood: a 2-second clip is positive for an annotator when that
  annotator's saliency score is >= 2 / 3 / 4 (the "min" in `HL-min-Fair` is this minimum score).
  HL-mAP is the mean, over queries and the 3 annotators, of the interpolated AP of the
  predicted clip scores; HL-Hit1 is whether the top-scored clip is positive for *any* annotator
  (max over annotators), averaged over queries.
- Every figure is a percentage rounded to 2 decimals (`float(f"{100 * v:.2f}")`), and the
  "average" mAP is the mean of the unrounded per-threshold values.

numpy only; the DDP-synced torchmetrics wrapper is `QVHighlightsMetrics` in
damo_lit.metrics.modules.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from damo_lit.metrics.spans import temporal_iou
from damo_lit.values import is_number, is_whole

IOU_THRESHOLDS: tuple[float, ...] = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
LENGTH_RANGES: dict[str, tuple[float, float]] = {
    "short": (0, 10),
    "middle": (10, 30),
    "long": (30, 150),
    "full": (0, 150),
}
SALIENCY_LEVELS: dict[str, int] = {"Fair": 2, "Good": 3, "VeryGood": 4}
CLIP_SECONDS = 2.0
MAX_PRED_WINDOWS = 10
NUM_ANNOTATORS = 3


class QVHighlightsError(ValueError):
    """Input that the QVHighlights evaluation cannot score; the message names the query."""


@dataclass(frozen=True)
class QVHTarget:
    """One annotated query: its relevant windows (seconds) and per-clip saliency from 3 annotators."""

    qid: Any
    duration: float
    windows: np.ndarray  # (G, 2)
    clip_ids: np.ndarray  # (K,) int
    saliency: np.ndarray  # (K, 3)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "<ground truth>") -> "QVHTarget":
        """Read an official `highlight_*_release.jsonl` object; errors name `where`."""
        qid = _qid(obj, where)
        if "duration" not in obj:
            raise QVHighlightsError(f"{where}: missing required key 'duration'")
        duration = _number(obj["duration"], f"{where}: 'duration'")
        if duration <= 0:
            raise QVHighlightsError(f"{where}: 'duration' must be > 0 seconds, got {obj['duration']!r}")
        windows = _windows(obj.get("relevant_windows", []), 2, f"{where}: qid {qid!r}: 'relevant_windows'")
        clip_ids = _clip_ids(obj.get("relevant_clip_ids", []), f"{where}: 'relevant_clip_ids'")
        saliency = _rows(obj.get("saliency_scores", []), NUM_ANNOTATORS, f"{where}: 'saliency_scores'")
        if len(clip_ids) != len(saliency):
            raise QVHighlightsError(
                f"{where}: {len(clip_ids)} relevant_clip_ids but {len(saliency)} rows of saliency_scores"
            )
        return cls(qid, duration, windows, clip_ids, saliency)


@dataclass(frozen=True)
class QVHPrediction:
    """One query's predictions: windows [start, end, score] (best first) and optional clip scores."""

    qid: Any
    windows: np.ndarray | None  # (P, 3), or None when the submission has no moment predictions
    saliency: np.ndarray | None  # (C,) one score per 2-second clip, or None

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str = "<prediction>") -> "QVHPrediction":
        """Read an official submission object (`qid`, `pred_relevant_windows`, `pred_saliency_scores`)."""
        qid = _qid(obj, where)
        windows = obj.get("pred_relevant_windows")
        if windows is not None:
            windows = _windows(windows, 3, f"{where}: qid {qid!r}: 'pred_relevant_windows'")
        saliency = obj.get("pred_saliency_scores")
        if saliency is not None:
            what = f"{where}: qid {qid!r}: 'pred_saliency_scores'"
            if not isinstance(saliency, (list, tuple)):
                raise QVHighlightsError(f"{what} must be a list of numbers (one per 2-second clip), got {saliency!r}")
            saliency = np.asarray([_number(x, f"{what}[{i}]") for i, x in enumerate(saliency)], dtype=np.float64)
        return cls(qid, windows, saliency)


def _qid(obj: Mapping[str, Any], where: str) -> Any:
    if "qid" not in obj:
        raise QVHighlightsError(f"{where}: missing required key 'qid'")
    qid = obj["qid"]
    if isinstance(qid, bool) or not isinstance(qid, (int, str, np.integer)):
        raise QVHighlightsError(f"{where}: 'qid' must be an integer or a string, got {qid!r}")
    return qid


def _number(value: Any, what: str) -> float:
    """A finite JSON number (not a string, a boolean or NaN, which the official evaluator's numpy
    and sklearn would either refuse or rank as no score should rank)."""
    if not is_number(value):
        raise QVHighlightsError(f"{what} must be a number, got {value!r}")
    if not np.isfinite(value):
        raise QVHighlightsError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _clip_ids(value: Any, what: str) -> np.ndarray:
    """Clip indices: whole numbers (1.7 is no clip)."""
    if not isinstance(value, (list, tuple)):
        raise QVHighlightsError(f"{what} must be a list of clip indices, got {value!r}")
    for i, clip in enumerate(value):
        if not is_whole(clip):
            raise QVHighlightsError(f"{what}[{i}] must be a whole number (a 2-second clip's index), got {clip!r}")
    return np.asarray(value, dtype=np.int64).reshape(-1)


def _rows(value: Any, width: int, what: str, checked_from: int = 0) -> np.ndarray:
    """A list of equal-length number lists as a (N, width) float array (only the first `width` kept);
    columns from `checked_from` on must be finite (the caller checks the ones before)."""
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise QVHighlightsError(f"{what} must be a list of [{width} numbers] rows, got {type(value).__name__}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, (list, tuple, np.ndarray)) or not all(is_number(x) for x in row):
            raise QVHighlightsError(f"{what}[{i}] must hold numbers, got {row!r}")
        numbers = [float(x) for x in row]
        if not all(np.isfinite(numbers[checked_from:width])):
            raise QVHighlightsError(f"{what}[{i}] holds a score that is not a finite number: {row!r}")
        if len(numbers) < width:
            raise QVHighlightsError(f"{what}[{i}] needs {width} numbers, got {row!r}")
        rows.append(numbers[:width])
    return np.asarray(rows, dtype=np.float64).reshape(-1, width)


def _windows(value: Any, width: int, what: str) -> np.ndarray:
    """`_rows` of time windows [start, end, ...]: each with finite bounds and an end not before its
    start. A reversed window has no length, so its IoU is undefined (the official evaluator's NaN,
    which its matching counts as a hit at every threshold): an input error, not a score."""
    rows = _rows(value, width, what, checked_from=2)
    for i, (start, end) in enumerate(rows[:, :2]):
        if not (np.isfinite(start) and np.isfinite(end)) or end < start:
            reason = "it ends before it starts" if end < start else "a bound is not a finite number"
            fields = "start, end, score" if width == 3 else "start, end"
            raise QVHighlightsError(
                f"{what}[{i}] is {list(value[i])!r}: {reason}; expected [{fields}] in seconds, with finite bounds "
                "and end >= start"
            )
    return rows


def _percent(value: float) -> float:
    """The evaluator's rounding: a fraction as a percentage with 2 decimals."""
    return float(f"{100 * value:.2f}")


def _thresholds_dict(values: Iterable[float]) -> dict[str, float]:
    return {str(t): _percent(v) for t, v in zip(IOU_THRESHOLDS, values)}


# ---------------------------------------------------------------- moment retrieval
def voc_interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision/recall curve with precision made monotone (VOC 2011 devkit)."""
    mprec = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def detection_ap(gt_windows: np.ndarray, pred_windows: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS) -> np.ndarray:
    """AP of one query's scored windows (P, 3) against its ground-truth windows (G, 2), per threshold.

    Predictions are taken by decreasing score (stable, so ties keep their order); each one is
    matched to the unmatched ground-truth window with the highest IoU, and is a false positive
    when that IoU is below the threshold or every window it reaches is already taken.
    """
    num_t, num_p, num_g = len(thresholds), len(pred_windows), len(gt_windows)
    if num_p == 0:
        return np.zeros(num_t)
    preds = pred_windows[np.argsort(-pred_windows[:, 2], kind="stable")]
    tp = np.zeros((num_t, num_p))
    fp = np.zeros((num_t, num_p))
    if num_g == 0:
        fp[:] = 1
    else:
        ious = temporal_iou(preds[:, :2], gt_windows)
        taken = np.full((num_t, num_g), False)
        for i in range(num_p):
            order = np.argsort(ious[i], kind="stable")[::-1]
            for t, threshold in enumerate(thresholds):
                for j in order:
                    if ious[i, j] < threshold:
                        break
                    if taken[t, j]:
                        continue
                    tp[t, i] = 1
                    taken[t, j] = True
                    break
                fp[t, i] = 1 - tp[t, i]
    tp_sum = np.cumsum(tp, axis=1)
    fp_sum = np.cumsum(fp, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp_sum / float(num_g)
        precision = tp_sum / (tp_sum + fp_sum)
    return np.array([voc_interpolated_ap(precision[t], recall[t]) for t in range(num_t)])


def top1_iou(gt_windows: np.ndarray, pred_windows: np.ndarray) -> float:
    """IoU of the top-1 predicted window with the ground-truth window it overlaps most.

    As in the evaluator, the window is chosen by true IoU and the figure reported is the
    intersection over the hull of the two windows (the same number whenever they overlap).
    """
    pred = pred_windows[0, :2]
    gt = gt_windows[int(np.argmax(temporal_iou(pred[None], gt_windows)[0]))]
    inter = max(0.0, min(pred[1], gt[1]) - max(pred[0], gt[0]))
    hull = max(pred[1], gt[1]) - min(pred[0], gt[0])
    return inter / hull if hull != 0 else 0.0


def _in_range(targets: list[QVHTarget], preds: list[QVHPrediction], low: float, high: float):
    """Keep only ground-truth windows with low < length <= high, and the queries that still have one."""
    if (low, high) == LENGTH_RANGES["full"]:
        return targets, preds
    kept = []
    for target in targets:
        lengths = target.windows[:, 1] - target.windows[:, 0]
        mask = (lengths > low) & (lengths <= high)
        if mask.any():
            kept.append(replace(target, windows=target.windows[mask]))
    qids = {t.qid for t in kept}
    return kept, [p for p in preds if p.qid in qids]


def eval_moment_retrieval(
    targets: list[QVHTarget], preds: list[QVHPrediction], progress: Callable[[], None] | None = None
) -> dict[str, dict[str, dict[str, float]]]:
    """{'short'|'middle'|'long'|'full': {'MR-mAP': {'0.5'..'0.95', 'average'}, 'MR-R1': {...}}}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (low, high) in LENGTH_RANGES.items():
        sub_targets, sub_preds = _in_range(targets, preds, low, high)
        gt_by_qid = {t.qid: t for t in sub_targets}
        aps, ious = [], []
        for pred in sub_preds:
            gt = gt_by_qid[pred.qid].windows
            if len(gt) == 0:
                raise QVHighlightsError(f"qid {pred.qid!r}: no relevant_windows to score moment retrieval against")
            if pred.windows is None or len(pred.windows) == 0:
                raise QVHighlightsError(f"qid {pred.qid!r}: no 'pred_relevant_windows' to score moment retrieval with")
            aps.append(detection_ap(gt, pred.windows[:MAX_PRED_WINDOWS]))
            ious.append(top1_iou(gt, pred.windows))
            if progress is not None:
                progress()
        if aps:
            ap_per_threshold = np.mean(np.array(aps), axis=0)
            ious_arr = np.asarray(ious)
            hits = [float(np.mean(ious_arr >= t)) for t in IOU_THRESHOLDS]
        else:  # no query in this length range: NaN, as the evaluator's mean over nothing gives
            ap_per_threshold = np.full(len(IOU_THRESHOLDS), np.nan)
            hits = [float("nan")] * len(IOU_THRESHOLDS)
        mean_ap = _thresholds_dict(ap_per_threshold)
        mean_ap["average"] = _percent(float(np.mean(ap_per_threshold)))
        out[name] = {"MR-mAP": mean_ap, "MR-R1": _thresholds_dict(hits)}
    return out


# ---------------------------------------------------------------- highlight detection
def saliency_ap(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Interpolated AP of clip scores against binary clip labels (video2gif's `get_ap`).

    All-negative labels give 0 and all-positive give 1. Otherwise precision is taken at every
    distinct score threshold, made monotone towards lower recall, and averaged over the distinct
    recall levels (recall compared in float32, as the evaluator does).
    """
    if len(np.unique(y_true)) == 1:
        return 0.0 if y_true[0] == 0 else 1.0
    order = np.argsort(y_score, kind="mergesort")[::-1]
    scores, labels = y_score[order], y_true[order]
    cut = np.r_[np.nonzero(np.diff(scores))[0], labels.size - 1]
    tps = np.cumsum(labels)[cut]
    fps = 1 + cut - tps
    precision = np.r_[(tps / (tps + fps))[::-1], 1.0]
    recall = np.r_[(tps / tps[-1])[::-1], 0.0].astype(np.float32)
    precision = np.maximum.accumulate(precision)
    return float(np.mean(precision[np.nonzero(np.diff(recall))[0]]))


def clip_labels(target: QVHTarget) -> np.ndarray:
    """(#clips, 3) saliency for the whole video: int(duration / 2) clips, 0 where not annotated."""
    num_clips = int(target.duration / CLIP_SECONDS)
    if num_clips == 0:
        raise QVHighlightsError(f"qid {target.qid!r}: a {target.duration} s video holds no {CLIP_SECONDS:g}-second "
                                "clip, so highlight detection cannot score it")
    full = np.zeros((num_clips, NUM_ANNOTATORS))
    if len(target.clip_ids) and (target.clip_ids.max() >= num_clips or target.clip_ids.min() < 0):
        raise QVHighlightsError(
            f"qid {target.qid!r}: relevant_clip_ids {target.clip_ids.tolist()} fall outside the "
            f"{num_clips} clips of a {target.duration} s video"
        )
    full[target.clip_ids] = target.saliency
    return full


def _fit(scores: np.ndarray, length: int) -> np.ndarray:
    """Clip scores cut or zero-padded to the video's clip count."""
    if len(scores) >= length:
        return scores[:length]
    return np.concatenate([scores, np.zeros(length - len(scores))])


def eval_highlight(
    targets: list[QVHTarget], preds: list[QVHPrediction], progress: Callable[[], None] | None = None
) -> dict[str, dict[str, float]]:
    """{'HL-min-Fair'|'HL-min-Good'|'HL-min-VeryGood': {'HL-mAP': ..., 'HL-Hit1': ...}}."""
    by_qid = {t.qid: t for t in targets}
    labels_by_qid = {p.qid: clip_labels(by_qid[p.qid]) for p in preds}  # only the queries scored
    out: dict[str, dict[str, float]] = {}
    for name, level in SALIENCY_LEVELS.items():
        aps = np.zeros((len(preds), NUM_ANNOTATORS))
        hits = np.zeros((len(preds), NUM_ANNOTATORS))
        for row, pred in enumerate(preds):
            if pred.saliency is None or len(pred.saliency) == 0:
                raise QVHighlightsError(f"qid {pred.qid!r}: no 'pred_saliency_scores' to score highlights with")
            positive = (labels_by_qid[pred.qid] >= level).astype(np.float64)
            top = int(np.argmax(pred.saliency))
            if top < len(positive):
                hits[row] = positive[top]
            scores = _fit(pred.saliency, len(positive))
            for annotator in range(NUM_ANNOTATORS):
                aps[row, annotator] = saliency_ap(positive[:, annotator], scores)
            if progress is not None:
                progress()
        out[f"HL-min-{name}"] = {"HL-mAP": _percent(float(np.mean(aps))), "HL-Hit1": _percent(float(np.mean(hits.max(axis=1))))}
    return out


# ---------------------------------------------------------------- the whole submission
def _qid_kind(qid: Any) -> str:
    return "string" if isinstance(qid, str) else "integer"


def _qid_type_note(pred_qids: set[Any], gt_qids: set[Any]) -> str:
    """'' unless some predicted qids match annotated ones only once their type is ignored ('10003'
    against 10003); then a sentence saying so. The official evaluator reads qids with json and
    compares them by value and type, so to it these are other queries too, and so they are here."""
    unmatched = {str(q): q for q in gt_qids - pred_qids}
    twins = [(q, unmatched[str(q)]) for q in pred_qids - gt_qids if str(q) in unmatched]
    if not twins:
        return ""
    pred, gt = min(twins, key=lambda pair: str(pair[0]))
    return (f"the qids differ in type: {len(twins)} predicted qids are {_qid_kind(pred)}s where the ground truth "
            f"has {_qid_kind(gt)}s (e.g. {pred!r} against {gt!r}); qids are compared by value and type, as the "
            f"official evaluator compares them: write them as {_qid_kind(gt)}s, as the ground truth does")


def evaluate_qvhighlights(
    preds: Sequence[QVHPrediction],
    targets: Sequence[QVHTarget],
    match_number: bool = True,
    progress: Callable[[], None] | None = None,
    partial_hint: str = "match_number=False",
) -> "OrderedDict[str, Any]":
    """The evaluator's output: {'brief': {...}, 'HL-min-Fair': ..., 'full': ..., 'long': ..., ...}.

    With `match_number` the predicted and annotated query sets must be equal (as the official
    script demands); without it only the queries present in both are scored. Moment retrieval
    is scored when the predictions carry windows, highlights when they carry clip scores
    (decided, as there, by the first prediction). `progress` is called once per query and part.
    `partial_hint` is how the error over unequal sets tells the caller to score the shared queries
    (a command line names its flag, e.g. damo-score's --allow-partial).
    """
    preds, targets = list(preds), list(targets)
    pred_qids, gt_qids = {p.qid for p in preds}, {t.qid for t in targets}
    if match_number and pred_qids != gt_qids:
        raise QVHighlightsError(_qid_type_note(pred_qids, gt_qids) or (
            f"the predictions and the ground truth cover different queries: {len(pred_qids - gt_qids)} "
            f"predicted qids are not annotated (e.g. {sorted(map(str, pred_qids - gt_qids))[:5]}), "
            f"{len(gt_qids - pred_qids)} annotated qids have no prediction "
            f"(e.g. {sorted(map(str, gt_qids - pred_qids))[:5]}); score the shared ones with {partial_hint}"
        ))
    shared = pred_qids & gt_qids
    preds = [p for p in preds if p.qid in shared]
    targets = [t for t in targets if t.qid in shared]
    if not preds:
        note = _qid_type_note(pred_qids, gt_qids)
        raise QVHighlightsError("no query has both a prediction and an annotation" + (f": {note}" if note else ""))

    metrics: dict[str, Any] = {}
    brief: "OrderedDict[str, float]" = OrderedDict()
    if preds[0].windows is not None:
        mr = eval_moment_retrieval(targets, preds, progress)
        metrics.update(mr)
        mr_brief = {
            "MR-full-mAP": mr["full"]["MR-mAP"]["average"],
            "MR-full-mAP@0.5": mr["full"]["MR-mAP"]["0.5"],
            "MR-full-mAP@0.75": mr["full"]["MR-mAP"]["0.75"],
            "MR-short-mAP": mr["short"]["MR-mAP"]["average"],
            "MR-middle-mAP": mr["middle"]["MR-mAP"]["average"],
            "MR-long-mAP": mr["long"]["MR-mAP"]["average"],
            "MR-full-R1@0.5": mr["full"]["MR-R1"]["0.5"],
            "MR-full-R1@0.7": mr["full"]["MR-R1"]["0.7"],
        }
        brief.update(sorted(mr_brief.items()))
    if preds[0].saliency is not None:
        hl = eval_highlight(targets, preds, progress)
        metrics.update(hl)
        for level_key, values in hl.items():
            for metric_key, value in values.items():
                brief[f"{level_key}-{metric_key.split('-')[1]}"] = value
    result: "OrderedDict[str, Any]" = OrderedDict(brief=brief)
    result.update(sorted(metrics.items()))
    return result
