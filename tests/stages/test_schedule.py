"""The learning rate of every stage: warmup then cosine decay, with the real config values, and how
the stage names it in the logs (train/lr)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from damo_lit.cli.common import compose_run
from damo_lit.stages.base import learning_rates
from damo_lit.stages.schedule import warmup_cosine

STAGES = ["stage1_align", "stage2_bridge", "stage3_temporal", "stage4_dialogue"]
TOTAL = 1000  # steps: a long enough run that the warmup spans several steps


def rates(base_lr: float, total: int, **scheduler: float) -> list[float]:
    """The rate in effect at steps 0 .. total (the scheduler stepped after each optimizer step, as
    Lightning does with interval: step; index total is where the schedule ends)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    schedule = warmup_cosine(optimizer, total_steps=total, **scheduler)
    out = []
    for _ in range(total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_the_configured_schedule_warms_up_peaks_and_decays_to_the_minimum(stage: str, tmp_path: Path) -> None:
    cfg = compose_run("train", [f"stage={stage}"], tmp_path).stage
    base, scheduler = float(cfg.optimizer.lr), {k: float(v) for k, v in cfg.scheduler.items()}
    warm = round(scheduler["warmup_ratio"] * TOTAL)
    assert warm >= 2, "the configs warm up (the check below needs a warmup of several steps)"
    lrs = rates(base, TOTAL, **scheduler)

    assert 0 < lrs[0] <= 0.05 * base, "the first step starts small"
    assert all(a < b for a, b in zip(lrs[: warm + 1], lrs[1 : warm + 1])), "the warmup rises at every step"
    assert lrs[warm] == pytest.approx(base, rel=1e-12) and max(lrs) == lrs[warm], "the peak: the end of warmup"
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :])), "no rise after the warmup"
    assert lrs[(warm + TOTAL) // 2] == pytest.approx((1 + scheduler["min_lr_ratio"]) / 2 * base, rel=1e-3), "cosine"
    assert lrs[TOTAL] == pytest.approx(scheduler["min_lr_ratio"] * base, abs=1e-12 * base), "ends at the minimum"
    assert lrs[TOTAL - 1] < 1e-4 * base + scheduler["min_lr_ratio"] * base


def test_a_floor_and_explicit_warmup_steps(tmp_path: Path) -> None:
    cfg = compose_run("train", ["stage=stage3_temporal", "stage.scheduler.min_lr_ratio=0.1",
                                "+stage.scheduler.warmup_steps=10"], tmp_path).stage
    lrs = rates(1.0, 200, **cfg.scheduler)
    assert lrs[0] == pytest.approx(1 / 11) and lrs[10] == pytest.approx(1.0), "warmup_steps wins over the ratio"
    assert min(lrs[10:]) == pytest.approx(0.1) == lrs[200], "the decay stops at min_lr_ratio"
    assert rates(1.0, 50, warmup_ratio=0.0)[0] == 1.0, "no warmup: the peak from the first step"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"total_steps": 0}, "total_steps must be > 0"),
    ({"total_steps": 10, "min_lr_ratio": 1.5}, r"min_lr_ratio must be a number in \[0, 1\], got 1.5"),
    ({"total_steps": 10, "warmup_ratio": "abc"}, r"warmup_ratio must be a number in \[0, 1\], got 'abc'"),
    ({"total_steps": 10, "warmup_steps": "abc"}, r"warmup_steps must be an integer >= 0 or null, got 'abc'"),
    ({"total_steps": 10, "warmup_steps": -2}, r"warmup_steps must be an integer >= 0 or null, got -2"),
])
def test_bad_schedules_are_refused(kwargs: dict, message: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=message):
        warmup_cosine(optimizer, **kwargs)


def test_learning_rates_are_one_train_lr_unless_the_groups_differ() -> None:
    def adamw(*group_lrs: float) -> torch.optim.Optimizer:
        groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "name": name}
                  for lr, name in zip(group_lrs, ("decay", "no_decay"))]
        return torch.optim.AdamW(groups, lr=1.0)

    assert learning_rates([adamw(1e-4, 1e-4)]) == {"lr": 1e-4}  # the stages' groups: one rate
    assert learning_rates([adamw(1e-4, 3e-4)]) == {"lr_decay": 1e-4, "lr_no_decay": 3e-4}
    unnamed = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in (1.0, 2.0)])
    assert learning_rates([unnamed]) == {"lr_pg1": 1.0, "lr_pg2": 2.0}
