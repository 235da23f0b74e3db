"""Metrics for DaMO: temporal grounding, QVHighlights moments and highlights, text-video retrieval.

Two layers, so that scoring a file never has to import torchmetrics (and through it
transformers and scipy, several seconds): numpy scorers in `grounding`, `qvhighlights`,
`retrieval` and `spans`, used by damo-score; and torchmetrics `Metric`s in `modules`
(GroundingMetrics, QVHighlightsMetrics, RetrievalMetrics), used by the training stages, whose
states sync across DDP ranks and which hand the gathered set to the same scorers. The Metric
classes are importable from here and load on first use. Keys are bare names; the caller
prefixes '{split}/'.
"""

from __future__ import annotations

from typing import Any

from damo_lit.metrics.grounding import GroundingScorer, QueryScores, modality_suffix, recall_key
from damo_lit.metrics.qvhighlights import QVHighlightsError, QVHPrediction, QVHTarget, evaluate_qvhighlights
from damo_lit.metrics.retrieval import (
    gold_ranks,
    paired_retrieval_metrics,
    rank_metrics,
    ranked_list_metrics,
    retrieval_metrics,
)
from damo_lit.metrics.spans import best_iou, clean_span, temporal_iou

_METRIC_CLASSES = ("CatStateMetric", "GroundingMetrics", "QVHighlightsMetrics", "RetrievalMetrics")

__all__ = [
    *_METRIC_CLASSES,
    "GroundingScorer",
    "QVHPrediction",
    "QVHTarget",
    "QVHighlightsError",
    "QueryScores",
    "best_iou",
    "clean_span",
    "evaluate_qvhighlights",
    "gold_ranks",
    "modality_suffix",
    "paired_retrieval_metrics",
    "rank_metrics",
    "ranked_list_metrics",
    "recall_key",
    "retrieval_metrics",
    "temporal_iou",
]


def __getattr__(name: str) -> Any:
    if name in _METRIC_CLASSES:
        from damo_lit.metrics import modules

        return getattr(modules, name)
    raise AttributeError(f"module 'damo_lit.metrics' has no attribute {name!r}")
