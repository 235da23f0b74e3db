"""torchmetrics `Metric`s over the numpy scorers, with states that sync across DDP ranks.

Each metric keeps per-query numbers as lists of 1-D tensors that torchmetrics concatenates
across updates and gathers across ranks, then hands the whole set to the same scorer that
damo-score uses. So the figures are the same on one process as on many, and the same as the
command line's on the same queries.

Why a base class: torchmetrics gathers a rank that saw no data (an eval set smaller than the
world size, an uneven last shard) as an empty tensor of the metric's *default* dtype, which
then no longer matches the other ranks' int64 or float64 tensors (and moving a metric to a
device resets that default). Here each state declares its own dtype and an empty state is sent
as an empty 1-D tensor of that dtype. States are 1-D on purpose: a rank with no data cannot
know a trailing size (an embedding width), so wider rows are flattened and reshaped in compute().
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from damo_lit.data.schema import MODALITIES
from damo_lit.metrics.grounding import DEFAULT_THRESHOLDS, GroundingScorer, QueryScores
from damo_lit.metrics.qvhighlights import (
    NUM_ANNOTATORS,
    QVHighlightsError,
    QVHPrediction,
    QVHTarget,
    evaluate_qvhighlights,
)
from damo_lit.metrics.retrieval import DEFAULT_KS, paired_retrieval_metrics
from damo_lit.metrics.spans import Span


class CatStateMetric(Metric):
    """Metric whose states are 1-D tensors concatenated across updates and across ranks."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cat_dtypes: dict[str, torch.dtype] = {}

    def add_cat_state(self, name: str, dtype: torch.dtype) -> None:
        """Register a list state `name` that holds 1-D tensors of `dtype`."""
        self.add_state(name, default=[], dist_reduce_fx="cat")
        self._cat_dtypes[name] = dtype

    def append(self, name: str, values: Any) -> None:
        """Append values (anything torch.as_tensor takes) to state `name`, flattened to 1-D."""
        if isinstance(values, torch.Tensor):
            tensor = values.detach().to(device=self.device, dtype=self._cat_dtypes[name])
        else:
            tensor = torch.as_tensor(np.asarray(values), dtype=self._cat_dtypes[name], device=self.device)
        getattr(self, name).append(tensor.reshape(-1))

    def cat(self, name: str) -> torch.Tensor:
        """The whole state `name` as one 1-D tensor (empty when nothing was added on any rank)."""
        value = getattr(self, name)
        if isinstance(value, torch.Tensor):  # after a sync torchmetrics has already concatenated it
            return value.reshape(-1).to(self._cat_dtypes[name])
        if not value:
            return torch.zeros(0, dtype=self._cat_dtypes[name], device=self.device)
        return dim_zero_cat(value).reshape(-1)

    def numpy(self, name: str) -> np.ndarray:
        """State `name` as a 1-D numpy array on the CPU."""
        return self.cat(name).cpu().numpy()

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        for name, dtype in self._cat_dtypes.items():
            value = getattr(self, name)
            if isinstance(value, list) and not value:
                setattr(self, name, [torch.zeros(0, dtype=dtype, device=self.device)])
        kwargs: dict[str, Any] = {"process_group": process_group}
        if dist_sync_fn is not None:
            kwargs["dist_sync_fn"] = dist_sync_fn
        super()._sync_dist(**kwargs)


class GroundingMetrics(CatStateMetric):
    """R@{thresholds}, mIoU, parse_rate and count of top-1 predicted windows, split by modality.

    update(pred_spans, gt_spans, modalities): one entry per query. `pred_spans[i]` is the top-1
    predicted (start, end) in seconds or None when no window could be parsed; `gt_spans[i]` is
    the query's list of ground-truth windows, and the prediction is scored against the one it
    overlaps best. Windows may come in either order; None, NaN, infinite or zero-length windows
    score IoU 0 and never raise. compute() returns bare keys (the caller adds '{split}/'):
    'R@0.3', 'R@0.5', 'R@0.7', 'mIoU', 'count', 'parse_rate', and for every modality that
    occurred 'R@0.5_audio', 'mIoU_audio', 'count_audio', ... (`GroundingScorer` has the rules).
    """

    def __init__(
        self,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        modalities: Sequence[str] = MODALITIES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.scorer = GroundingScorer(tuple(thresholds), tuple(modalities))
        self.add_cat_state("iou", torch.float64)
        self.add_cat_state("parsed", torch.bool)
        self.add_cat_state("modality", torch.int64)

    def update(
        self,
        pred_spans: Sequence[Span | None],
        gt_spans: Sequence[Sequence[Span]],
        modalities: Sequence[str | None] | None = None,
    ) -> None:
        """Add one batch of queries (see the class docstring)."""
        scores = self.scorer.score_queries(pred_spans, gt_spans, modalities)
        self.append("iou", scores.iou)
        self.append("parsed", scores.parsed)
        self.append("modality", scores.modality)

    def compute(self) -> dict[str, torch.Tensor]:
        """The figures over every query seen on every rank (NaN rates when there were none)."""
        scores = QueryScores(self.numpy("iou"), self.numpy("parsed"), self.numpy("modality"))
        return {key: torch.tensor(value, dtype=torch.float32) for key, value in self.scorer.summarize(scores).items()}


def qid_code(qid: Any) -> int:
    """An int64 that stands for a qid on every rank: the qid itself when it is an integer, else a hash."""
    if isinstance(qid, torch.Tensor):
        qid = qid.item()
    if isinstance(qid, (int, np.integer)) and not isinstance(qid, bool):
        return int(qid)
    digest = hashlib.blake2b(str(qid).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _split(flat: np.ndarray, counts: np.ndarray, width: int) -> list[np.ndarray]:
    """Cut a flat array into per-query (count, width) blocks; a negative count means absent (empty)."""
    counts = np.maximum(counts, 0)
    ends = np.cumsum(counts)
    return [flat[(end - count) * width : end * width].reshape(-1, width) for count, end in zip(counts, ends)]


class QVHighlightsMetrics(CatStateMetric):
    """The official QVHighlights MR + HL figures over queries gathered from every rank.

    update(preds, targets): two lists of official-format dicts for the same queries in the same
    order (a prediction {'qid', 'pred_relevant_windows', 'pred_saliency_scores'} and its
    annotation {'qid', 'duration', 'relevant_windows', 'relevant_clip_ids', 'saliency_scores'}).
    Every number is kept in flat tensors with per-query counts, so states sync by concatenation.
    A qid seen twice (DistributedSampler pads the last batch with repeats) counts once.
    compute() returns `evaluate_qvhighlights`'s nested dict (percentages); log its 'brief'.
    """

    _INT_STATES = ("qid", "n_pred", "n_sal", "n_gt", "n_clip", "clip_ids")
    _FLOAT_STATES = ("duration", "pred", "sal", "gt", "clip_scores")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self._INT_STATES:
            self.add_cat_state(name, torch.int64)
        for name in self._FLOAT_STATES:
            self.add_cat_state(name, torch.float64)

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch of (prediction, annotation) pairs in official format."""
        if len(preds) != len(targets):
            raise ValueError(f"got {len(preds)} predictions but {len(targets)} annotations")
        for i, (pred_obj, target_obj) in enumerate(zip(preds, targets)):
            pred = QVHPrediction.from_dict(pred_obj, f"prediction {i} of the batch")
            target = QVHTarget.from_dict(target_obj, f"annotation {i} of the batch")
            if pred.qid != target.qid:
                raise ValueError(f"batch entry {i}: prediction qid {pred.qid!r} != annotation qid {target.qid!r}")
            self.append("qid", [qid_code(pred.qid)])
            self.append("duration", [target.duration])
            self.append("n_pred", [-1 if pred.windows is None else len(pred.windows)])
            self.append("pred", np.zeros(0) if pred.windows is None else pred.windows)
            self.append("n_sal", [-1 if pred.saliency is None else len(pred.saliency)])
            self.append("sal", np.zeros(0) if pred.saliency is None else pred.saliency)
            self.append("n_gt", [len(target.windows)])
            self.append("gt", target.windows)
            self.append("n_clip", [len(target.clip_ids)])
            self.append("clip_ids", target.clip_ids)
            self.append("clip_scores", target.saliency)

    def compute(self) -> "OrderedDict[str, Any]":
        """The official nested result over all distinct queries seen on all ranks."""
        arr = {name: self.numpy(name) for name in self._cat_dtypes}
        if len(arr["qid"]) == 0:
            raise QVHighlightsError("QVHighlightsMetrics.compute() called before any update()")
        n_pred, n_sal = arr["n_pred"], arr["n_sal"]
        pred_windows = _split(arr["pred"], n_pred, 3)
        saliency = _split(arr["sal"], n_sal, 1)
        gt_windows = _split(arr["gt"], arr["n_gt"], 2)
        clip_ids = _split(arr["clip_ids"], arr["n_clip"], 1)
        clip_scores = _split(arr["clip_scores"], arr["n_clip"], NUM_ANNOTATORS)
        preds, targets, seen = [], [], set()
        for i, qid in enumerate(arr["qid"].tolist()):
            if qid in seen:
                continue
            seen.add(qid)
            windows = None if n_pred[i] < 0 else pred_windows[i]
            scores = None if n_sal[i] < 0 else saliency[i].reshape(-1)
            preds.append(QVHPrediction(qid, windows, scores))
            targets.append(QVHTarget(qid, float(arr["duration"][i]), gt_windows[i], clip_ids[i].reshape(-1), clip_scores[i]))
        return evaluate_qvhighlights(preds, targets)


class RetrievalMetrics(CatStateMetric):
    """Text-to-video and video-to-text R@k / MdR / MnR from paired embeddings over the whole set.

    update(text_emb, video_emb): (B, D) each, row i of both is one pair. The embeddings are
    gathered from every rank (flattened, with the width as a max-reduced state, so a rank that
    saw nothing still takes part), and compute() scores the full (N, N) cosine (or, with
    normalize=False, dot-product) similarity with `paired_retrieval_metrics`: keys 't2v_R@1',
    ..., 't2v_MdR', 't2v_MnR', 't2v_count' and the same for 'v2t_'. A pair that
    DistributedSampler repeats to even out the last batch becomes a second candidate: leave it
    out (the stages do, by the batch's `padding` from EvalSampler) when the figures must be exact.
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, normalize: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(int(k) for k in ks)
        self.normalize = normalize
        self.add_cat_state("text", torch.float64)
        self.add_cat_state("video", torch.float64)
        self.add_state("dim", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="max")

    def update(self, text_emb: torch.Tensor, video_emb: torch.Tensor) -> None:
        """Add a batch of paired embeddings."""
        if text_emb.ndim != 2 or text_emb.shape != video_emb.shape:
            raise ValueError(
                f"text_emb and video_emb must both be (B, D) with the same shape, got {tuple(text_emb.shape)} "
                f"and {tuple(video_emb.shape)}"
            )
        width = int(text_emb.shape[1])
        if int(self.dim) not in (0, width):
            raise ValueError(f"embedding width changed from {int(self.dim)} to {width} between updates")
        self.dim = torch.tensor(width, dtype=torch.int64, device=self.device)
        self.append("text", text_emb)
        self.append("video", video_emb)

    def similarity(self) -> torch.Tensor:
        """The (N, N) text x video similarity of all pairs seen on all ranks (row i, column i: a pair)."""
        width = int(self.dim)
        if width == 0:
            raise ValueError("RetrievalMetrics.compute() called before any update()")
        text = self.cat("text").reshape(-1, width)
        video = self.cat("video").reshape(-1, width)
        if self.normalize:
            text, video = F.normalize(text, dim=-1), F.normalize(video, dim=-1)
        return text @ video.T

    def compute(self) -> dict[str, torch.Tensor]:
        """Both directions over all pairs seen on all ranks."""
        result = paired_retrieval_metrics(self.similarity(), self.ks)
        return {key: torch.tensor(value, dtype=torch.float32) for key, value in result.items()}
