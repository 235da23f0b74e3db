"""Parameter counts per module group and per training stage, and the LLM's tokens per video."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from damo_lit.models.damo import STAGE_TRAINABLE, DaMO

# Summary rows: the key in the report and the module group it counts.
SUMMARY_ROWS = (
    ("vision", "vision"),
    ("audio", "audio"),
    ("global_residual", "residual"),
    ("fuseformer", "fuseformer"),
    ("projector", "projector"),
    ("llm", "llm"),
    ("lora", "lora"),
    ("text_encoder", "text_encoder"),
)


@dataclass
class ModelSummary:
    params: dict[str, int]  # per module group, plus "total" (every parameter once)
    trainable: dict[str, int]  # per stage: parameters with requires_grad in that stage
    llm_tokens_per_video: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count(params: list[nn.Parameter]) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def stage_table(damo: DaMO) -> dict[str, dict[str, int]]:
    """Per summary row: its parameter count and, per stage, how many of them train."""
    table = {}
    for key, group in SUMMARY_ROWS:
        row = {"params": _count(damo.group_parameters(group))}
        for stage in STAGE_TRAINABLE:
            trains = group in damo.trainable_groups(stage)
            row[stage] = _count(damo.trainable_parameters([group])) if trains else 0
        table[key] = row
    return table


def summarize(damo: DaMO) -> ModelSummary:
    """Count without touching requires_grad (works on the meta device)."""
    params = {key: _count(damo.group_parameters(group)) for key, group in SUMMARY_ROWS}
    params["total"] = _count(list(damo.parameters()))
    trainable = {stage: _count(damo.trainable_parameters(damo.trainable_groups(stage))) for stage in STAGE_TRAINABLE}
    return ModelSummary(params, trainable, damo.llm_tokens_per_video)
