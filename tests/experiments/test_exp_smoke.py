"""Smoke test: the ablation runner for real (damo-demo, every stage) in --quick mode on a tiny set.

Two variants, three and four stages of 2 steps each, a damo-train process per stage: minutes on
2 cores, hence slow (make test-slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from exp_helpers import REPO_ROOT
from omegaconf import OmegaConf
from PIL import Image

from damo_lit.data.synthetic import SynthConfig, generate


@pytest.mark.slow
def test_ablation_runner_quick(tmp_path: Path) -> None:
    data = tmp_path / "synthetic"
    generate(data, SynthConfig(videos=20, seed=7, min_seconds=8, max_seconds=10, workers=2))
    out = tmp_path / "ablations"
    cmd = [sys.executable, str(REPO_ROOT / "experiments" / "ablations" / "run.py"), "--quick", f"exp.out={out}",
           "exp.only=[no_audio,skip_stage3]", f"data.root={data}", f"data.decoded_cache_dir={data / 'decoded'}",
           "data.generate=null", "data.num_workers=0", "data.prepare_workers=1", "callbacks.progress_bar=null",
           "trainer.enable_progress_bar=false"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| no audio | stage4 |" in done.stdout, "the table is printed"

    no_audio = json.loads((out / "no_audio" / "summary.json").read_text())
    assert list(no_audio["stages"]) == ["stage1", "stage2", "stage3", "stage4"]
    assert "test/R@0.5" in no_audio["stages"]["stage4"] and "test/baseline_R@0.5" in no_audio["stages"]["stage4"]
    assert OmegaConf.load(out / "no_audio" / "stage3" / ".hydra" / "config.yaml").model.audio.enabled is False
    skip3 = json.loads((out / "skip_stage3" / "summary.json").read_text())
    assert list(skip3["stages"]) == ["stage1", "stage2", "stage4"]

    results = json.loads((out / "results.json").read_text())
    assert [(r["name"], r["status"], r["final_stage"]) for r in results["runs"]] == [
        ("no_audio", "ran", "stage4"), ("skip_stage3", "ran", "stage4")]
    assert "| skip stage 3 | stage4 |" in (out / "results.md").read_text()
    with Image.open(out / "results.png") as image:
        assert image.format == "PNG"

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reusing ") == 2, "a second call reuses both runs"
