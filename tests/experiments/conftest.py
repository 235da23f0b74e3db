"""Fixtures for the experiment runners' tests: load a runner, a fake damo-demo, hand-made summaries."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest
from exp_helpers import load_runner

from experiments import common

FAKE_DEMO = Path(__file__).with_name("fake_demo.py")


@pytest.fixture()
def runner() -> Callable[[str], ModuleType]:
    return load_runner


@pytest.fixture()
def fake_demo(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every run goes to tests/experiments/fake_demo.py instead of damo-demo."""
    def command(out_dir: Path, overrides: list[str]) -> list[str]:
        return [sys.executable, str(FAKE_DEMO), f"demo.out_dir={out_dir}", *overrides]

    monkeypatch.setattr(common, "demo_command", command)
    return FAKE_DEMO


@pytest.fixture()
def write_summary() -> Callable[..., Path]:
    """write_summary(run_dir, final_metrics, final_stage="stage4", seconds=600.0): a finished demo's summary."""

    def write(run_dir: Path, metrics: dict[str, float], final_stage: str = "stage4", seconds: float = 600.0) -> Path:
        stages: dict[str, Any] = {"stage1": {"test/t2v_R@1": 0.4}, "stage2": {"test/loss": 4.0}}
        if final_stage == "stage4":
            stages["stage3"] = {k: v / 2 for k, v in metrics.items()}  # not the final figures
        stages[final_stage] = metrics
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "summary.json"
        path.write_text(json.dumps({"stages": stages, "seconds": {"total": seconds}}))
        return path

    return write
