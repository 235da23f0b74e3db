"""make demo's pipeline without training: which commands run, in which order, with which overrides
(the stage processes are replaced by a fake that leaves what a finished stage leaves)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from damo_lit.cli import demo
from damo_lit.cli.common import compose


def _word(cmd: list[str], key: str) -> str | None:
    return next((w.split("=", 1)[1] for w in cmd if w.startswith(key + "=")), None)


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record every command; a damo-train command leaves weights (with tower tensors) and metrics."""
    seen: list[list[str]] = []

    def fake_call(cmd: list[str]) -> int:
        seen.append(list(cmd))
        run_dir = _word(cmd, "hydra.run.dir")
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            save_file({"vision.w": torch.zeros(2), "fuseformer.w": torch.zeros(2)}, str(Path(run_dir) / "weights.safetensors"))
            (Path(run_dir) / "metrics.json").write_text(json.dumps({"test/R@0.5": 0.5}))
        return 0

    monkeypatch.setattr(demo.subprocess, "call", fake_call)
    monkeypatch.setattr(demo, "print_table", lambda *a, **k: None)
    return seen


def _kind(cmd: list[str]) -> str:
    return "cache" if "damo_lit.cli.cache" in cmd else _word(cmd, "stage") or "?"


def test_stages_3_and_4_read_a_cache_made_with_stage_2s_towers(calls: list[list[str]], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    summary = demo.run_pipeline([f"out_dir={out}"], ["trainer.devices=1", "data.batch_size=4", "logger=csv"])
    assert [_kind(c) for c in calls] == ["stage1_align", "stage2_bridge", "cache", "stage3_temporal", "stage4_dialogue"]
    cache = calls[2]
    assert _word(cache, "init_from") == str(out / "stage2") and _word(cache, "out") == str(out / "features")
    # damo-cache gets the model / data words of the stages, not trainer / logger ones.
    assert "data.batch_size=4" in cache and "model=damo_tiny" in cache and "data=synthetic" in cache
    assert not any(w.startswith(("trainer.", "logger")) for w in cache[3:])
    for cmd in calls[:2]:
        assert _word(cmd, "data.features") is None and _word(cmd, "model.vision.trainable") is None
    for cmd in calls[3:]:
        assert _word(cmd, "data.features") == str(out / "features")
        assert _word(cmd, "model.vision.trainable") == "false" and _word(cmd, "model.audio.trainable") == "false"
    assert _word(calls[4], "stage.init_from") == str(out / "stage3")
    assert set(summary["seconds"]) >= {"stage1", "stage2", "features", "stage3", "stage4", "total"}
    # The code the figures come from: this checkout's commit (a clean clone in CI; None outside git).
    head = demo.subprocess.run(["git", "-C", str(demo.PROJECT_ROOT), "rev-parse", "--short=7", "HEAD"],
                               capture_output=True, text=True)  # fmt: skip
    if head.returncode == 0:
        assert summary["code"]["commit"] == head.stdout.strip() and isinstance(summary["code"]["dirty"], bool)
    assert json.loads((out / "summary.json").read_text())["code"] == summary["code"]


def test_the_cache_follows_skipped_stages_and_can_be_turned_off(calls: list[list[str]], tmp_path: Path) -> None:
    demo.run_pipeline([f"out_dir={tmp_path / 'a'}", "skip=[stage3]"], [])
    assert [_kind(c) for c in calls] == ["stage1_align", "stage2_bridge", "cache", "stage4_dialogue"]
    calls.clear()
    demo.run_pipeline([f"out_dir={tmp_path / 'b'}", "features.enabled=false"], [])
    assert [_kind(c) for c in calls] == ["stage1_align", "stage2_bridge", "stage3_temporal", "stage4_dialogue"]
    assert all(_word(c, "data.features") is None for c in calls)


def test_no_init_from_when_the_previous_stage_holds_no_towers(tmp_path: Path) -> None:
    run_dir = tmp_path / "stage2"
    run_dir.mkdir()
    save_file({"fuseformer.w": torch.zeros(2)}, str(run_dir / "weights.safetensors"))
    cmd = demo.cache_command(tmp_path / "features", run_dir, ["model=damo_paper", "+data.x=1", "trainer.devices=8"])
    assert _word(cmd, "init_from") is None
    assert cmd[-4:] == ["model=damo_paper", "+data.x=1", "model.vision.trainable=false", "model.audio.trainable=false"]


def test_the_cache_step_composes_with_the_words_the_stages_get(tmp_path: Path) -> None:
    # `make demo seed=1` (or an experiment's replicate) once failed in the features step:
    # "Could not override 'seed'", after two stages had run
    words = ["seed=1", "trainer.devices=2", "model.fuseformer.depth=2", "data.batch_size=4", "paths.cache_dir=/x"]
    cmd = demo.cache_command(tmp_path / "features", None, words)
    assert cmd[:3] == [sys.executable, "-m", "damo_lit.cli.cache"]
    cfg = compose("cache", cmd[3:])
    assert cfg.model.fuseformer.depth == 2 and cfg.data.batch_size == 4 and cfg.paths.cache_dir == "/x"


def test_an_unknown_first_cached_stage_is_refused(calls: list[list[str]], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="demo.features.first_stage"):
        demo.run_pipeline([f"out_dir={tmp_path}", "features.first_stage=stage9"], [])
