"""Temporal grounding figures: R@IoU and mIoU of the top-1 predicted window, overall and per modality.

The numbers DaMO reports on Charades-STA and ActivityNet Captions (R@0.3 / R@0.5 / R@0.7 /
mIoU), and the per-modality split that tells whether audio-only questions are answered from the
audio. `GroundingScorer` turns queries into three numbers each (IoU, parsed or not, modality
index) and those numbers into the figures; the torchmetrics `GroundingMetrics`
(damo_lit.metrics.modules) keeps the per-query numbers as DDP-synced state and damo-score
uses the scorer directly, so both give the same figures by construction. numpy only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from damo_lit.data.schema import MODALITIES
from damo_lit.metrics.spans import Span, best_iou, clean_span

DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)
NO_MODALITY = -1


def modality_suffix(tag: str) -> str:
    """The key suffix for a modality tag: lower case, runs of anything but a-z, 0-9 and '-'
    become '-', so 'audio-visual', 'Audio Visual' and 'audio_visual' all give '_audio-visual'."""
    slug = re.sub(r"[^a-z0-9-]+", "-", str(tag).strip().lower()).strip("-")
    if not slug:
        raise ValueError(f"modality tag {tag!r} has no letters or digits to name a metric key with")
    return "_" + slug


def recall_key(threshold: float) -> str:
    """'R@0.5' for 0.5: the key of recall at an IoU threshold."""
    return f"R@{threshold:g}"


@dataclass(frozen=True)
class QueryScores:
    """Per-query numbers, one entry per query: what the grounding figures are computed from."""

    iou: np.ndarray  # float64, IoU of the top-1 prediction with the best-matching ground truth
    parsed: np.ndarray  # bool, a usable window was predicted
    modality: np.ndarray  # int64, index into the scorer's modalities, NO_MODALITY for None


@dataclass(frozen=True)
class GroundingScorer:
    """How queries become grounding figures: the IoU thresholds and the known modality tags.

    Keys of `summarize`: 'R@0.3', 'R@0.5', 'R@0.7', 'mIoU', 'count', 'parse_rate', and for every
    modality that occurs, the same R@ / mIoU / count with `modality_suffix(tag)` appended
    ('R@0.5_audio', 'mIoU_audio-visual', 'count_visual'). Queries without a modality count only
    in the overall figures. Rates are fractions; with no queries they are NaN.
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    modalities: tuple[str, ...] = MODALITIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if not self.thresholds or any(not 0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"thresholds must be IoU values in (0, 1], got {self.thresholds!r}")
        suffixes = [modality_suffix(m) for m in self.modalities]
        if len(set(suffixes)) != len(suffixes):
            raise ValueError(f"modalities {self.modalities!r} give clashing key suffixes {suffixes!r}")

    @property
    def suffixes(self) -> tuple[str, ...]:
        return tuple(modality_suffix(m) for m in self.modalities)

    def modality_index(self, tag: str | None) -> int:
        """Index of a modality tag (matched by its suffix), NO_MODALITY for None; unknown tags raise."""
        if tag is None:
            return NO_MODALITY
        try:
            return self.suffixes.index(modality_suffix(tag))
        except ValueError:
            raise ValueError(f"unknown modality {tag!r}: expected one of {', '.join(self.modalities)}") from None

    def score_queries(
        self,
        pred_spans: Sequence[Span | None],
        gt_spans: Sequence[Sequence[Span]],
        modalities: Sequence[str | None] | None = None,
    ) -> QueryScores:
        """Per-query numbers: top-1 prediction (or None) against all of the query's ground-truth spans."""
        if len(pred_spans) != len(gt_spans):
            raise ValueError(f"pred_spans has {len(pred_spans)} entries but gt_spans has {len(gt_spans)}")
        if modalities is None:
            modalities = [None] * len(pred_spans)
        if len(modalities) != len(pred_spans):
            raise ValueError(f"modalities has {len(modalities)} entries but pred_spans has {len(pred_spans)}")
        return QueryScores(
            iou=np.array([best_iou(p, g) for p, g in zip(pred_spans, gt_spans)], dtype=np.float64),
            parsed=np.array([clean_span(p) is not None for p in pred_spans], dtype=bool),
            modality=np.array([self.modality_index(m) for m in modalities], dtype=np.int64),
        )

    def _figures(self, iou: np.ndarray, suffix: str) -> dict[str, float]:
        with np.errstate(invalid="ignore"):
            out = {recall_key(t) + suffix: float(np.mean(iou >= t)) if iou.size else float("nan") for t in self.thresholds}
            out["mIoU" + suffix] = float(np.mean(iou)) if iou.size else float("nan")
        out["count" + suffix] = float(iou.size)
        return out

    def summarize(self, scores: QueryScores) -> dict[str, float]:
        """The figures over a set of queries (see the class docstring for the keys)."""
        out = self._figures(scores.iou, "")
        out["parse_rate"] = float(np.mean(scores.parsed)) if scores.parsed.size else float("nan")
        for index, suffix in enumerate(self.suffixes):
            mask = scores.modality == index
            if mask.any():
                out.update(self._figures(scores.iou[mask], suffix))
        return out
