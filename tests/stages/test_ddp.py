"""Stage 3 runs as two DDP processes on the CPU (gloo), through the same entry point users call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_stage3_two_process_cpu_ddp(tiny_overrides: list[str], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "damo_lit.cli.train", "stage=stage3_temporal", f"hydra.run.dir={tmp_path}",
           *tiny_overrides, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=2",
           "data.max_samples_per_split=16", "trainer.limit_val_batches=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert "distributed_backend=gloo" in done.stdout + done.stderr
    assert "All distributed processes registered. Starting with 2 processes" in done.stdout + done.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/R@0.5" in metrics and "val/R@0.5" in metrics
    assert (tmp_path / "weights.safetensors").is_file()
