"""Issue 6's proof of learning: `make demo` (damo-demo on the embedded default) reaches real
temporal grounding on the held-out test split inside the 20-minute budget on 2 cores.

Slow (the whole demo, ~10-20 min): `make test-slow`. As from a clean clone, everything is made
anew in a temporary folder (the synthetic set, the tiny parts, the caches), and the 20 minutes
include generating the set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUDGET_SECONDS = 20 * 60
TWO_CORES = sorted(os.sched_getaffinity(0))[:2]


@pytest.mark.slow
def test_demo_meets_the_grounding_targets(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # The budget is for 2 cores: on a bigger machine the run is pinned to two of them.
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(len(TWO_CORES))}
    fresh = [f"demo.out_dir={out}", f"paths.data_dir={tmp_path / 'data'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run([sys.executable, "-m", "damo_lit.cli.demo", *fresh], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=2 * BUDGET_SECONDS,
                          preexec_fn=lambda: os.sched_setaffinity(0, TWO_CORES))  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "data" / "synthetic" / "synth.json").is_file(), "the set was generated in this run"
    summary = json.loads((out / "summary.json").read_text())
    final = summary["stages"]["stage4"]
    got = {key: final[key] for key in ("test/R@0.5", "test/R@0.5_audio", "test/R@0.5_visual", "test/parse_rate",
                                       "test/baseline_R@0.5")}
    assert summary["seconds"]["total"] <= BUDGET_SECONDS, got
    assert got["test/parse_rate"] >= 0.95, got
    assert got["test/R@0.5"] >= 0.6, got
    assert got["test/R@0.5_audio"] >= 0.5, got
    assert got["test/R@0.5_visual"] >= 0.5, got
    # Issue 4: stages 3 and 4 both beat the constant-span baseline computed in the same run.
    for stage in ("stage3", "stage4"):
        figures = summary["stages"][stage]
        assert figures["test/R@0.5"] > figures["test/baseline_R@0.5"], (stage, figures)
