"""Every run the runners make composes: its overrides exist in each stage's config (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from exp_helpers import load_runner

from damo_lit.cli.common import compose
from damo_lit.cli.demo import feature_overrides, split_overrides
from damo_lit.models.config import DaMOConfig
from experiments import common

RUNS = [*load_runner("ablations").VARIANTS, *load_runner("fusion_depth").build_runs([])[0]]


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_run_composes_for_every_stage(run: common.Run) -> None:
    demo_words, stage_words = split_overrides([*common.QUICK_OVERRIDES, *run.overrides])
    demo = compose("demo", demo_words)
    stages = [key for key in demo.stages if key not in demo.skip]
    assert stages and len(stages) >= 3
    cached_from = list(demo.stages).index(demo.features.first_stage) if demo.features.enabled else len(demo.stages)
    for key in stages:
        cached = feature_overrides(Path("features")) if list(demo.stages).index(key) >= cached_from else []
        cfg = compose("train", [f"stage={demo.stages[key].stage}", *demo.common, *cached, *demo.stages[key].overrides,
                                *stage_words])  # fmt: skip
        model = DaMOConfig.from_mapping(OmegaConf.to_container(cfg.model, resolve=True))
        assert cfg.trainer.max_steps == 2 and cfg.logger is not None
        for word in stage_words:
            key_path, _, value = word.partition("=")
            if key_path.startswith("model."):
                assert str(OmegaConf.select(cfg, key_path)).lower() == value, word
        if run.name == "no_audio":
            assert model.audio.enabled is False
