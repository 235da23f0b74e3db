"""conf/experiment/ and conf/hparams_search/: every file composes, the smoke experiment trains
through the users' entry point, and a multirun ends with its ranked summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from damo_lit.cli.common import CONF_DIR, compose
from damo_lit.cli.sweep import SUMMARY_JSON, SUMMARY_MD, metric_mode, write_summary

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
SEARCHES = sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml"))


def test_the_groups_hold_files() -> None:
    assert {"paper_stage3_charades", "tiny_smoke"} <= set(EXPERIMENTS)
    assert {"fuseformer_depth", "stage3_lr"} <= set(SEARCHES)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name: str) -> None:
    cfg = compose("train", [f"experiment={name}", "data.root=/data/x"])
    assert cfg.stage.name and cfg.model.llm.name_or_path and cfg.trainer._target_


def test_paper_experiment_is_the_papers_stage3_recipe() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose("train", ["experiment=paper_stage3_charades", "data.root=/data/charades"])
    assert cfg.model.llm.name_or_path == "llava-hf/llava-v1.6-mistral-7b-hf" and cfg.model.num_frames == 24
    assert (cfg.model.llm.lora.r, cfg.model.llm.lora.alpha) == (32, 64)
    assert cfg.stage.name == "stage3" and cfg.stage.optimizer.lr == 1e-4 and cfg.stage.optimizer.weight_decay == 0.02
    assert cfg.data.format == "charades_sta" and cfg.data.splits.train == "/data/charades/charades_sta_train.txt"
    assert list(cfg.data.durations) == ["/data/charades/Charades_v1_train.csv", "/data/charades/Charades_v1_test.csv"]
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_epochs == 2
    assert isinstance(instantiate(cfg.trainer.strategy), FSDPStrategy)


@pytest.mark.parametrize("name", SEARCHES)
def test_every_search_is_a_multirun_ranked_by_a_metric(name: str) -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", [f"hparams_search={name}"], return_hydra_config=True)
    assert cfg.optimized_metric == "val/R@0.5"
    assert str(cfg.hydra.mode).endswith("MULTIRUN") and cfg.hydra.sweeper.params
    assert cfg.hydra.callbacks.sweep_summary._target_ == "damo_lit.cli.sweep.SweepSummary"
    for key in cfg.hydra.sweeper.params:  # each swept key exists in the composed config
        assert compose("train", [f"{key}=1"]) is not None


def test_smoke_experiment_trains_through_damo_train(tiny_overrides: list[str], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "damo_lit.cli.train", "experiment=tiny_smoke", f"hydra.run.dir={tmp_path}",
           *tiny_overrides, "trainer.max_steps=2"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/R@0.5" in metrics and "val/R@0.5" in metrics
    assert (tmp_path / "csv").is_dir(), "the smoke experiment logs to CSV, not W&B"


def test_a_search_ends_with_a_ranked_summary(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Job 0 (depth 0) fails: the others still run, and the summary is written though Hydra then
    ends the multirun with the failure (exit 1), with job 0 listed as failed, not left out."""
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "damo_lit.cli.train", "hparams_search=fuseformer_depth", f"hydra.sweep.dir={sweep}",
           "model.fuseformer.depth=0,1,2", *tiny_overrides, "trainer.max_steps=2",
           "data.max_samples_per_split=8", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, (done.stdout[-2000:], done.stderr[-4000:])
    summary = json.loads((sweep / SUMMARY_JSON).read_text())
    assert summary["optimized_metric"] == "val/R@0.5" and summary["mode"] == "max"
    failed = summary["jobs"].pop()
    assert failed["job"] == "0" and failed["status"].startswith("failed: ") and "depth" in failed["status"], failed
    assert "| 0 | `model.fuseformer.depth=0` |" in (sweep / SUMMARY_MD).read_text()
    jobs = summary["jobs"]
    assert sorted(j["job"] for j in jobs) == ["1", "2"] and all(j["status"] == "finished" for j in jobs)
    assert {o for j in jobs for o in j["overrides"] if o.startswith("model.fuseformer.depth")} == {"model.fuseformer.depth=1",
                                                                       "model.fuseformer.depth=2"}
    scores = [j["metrics"]["val/R@0.5"] for j in jobs]
    assert scores == sorted(scores, reverse=True), "best first"
    table = (sweep / SUMMARY_MD).read_text()
    assert "`model.fuseformer.depth=1`" in table and "`model.fuseformer.depth=2`" in table


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict | None) -> None:
    folder = sweep / name / ".hydra"
    folder.mkdir(parents=True)
    (folder / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


def test_summary_ranks_lists_failures_and_shows_only_what_varies(tmp_path: Path) -> None:
    _job(tmp_path, "0", ["data=synthetic", "stage.optimizer.lr=1e-4"], {"val/R@0.5": 0.4, "val/loss": 1.0})
    _job(tmp_path, "1", ["data=synthetic", "stage.optimizer.lr=3e-4"], {"val/R@0.5": 0.6, "val/loss": 2.0})
    _job(tmp_path, "2", ["data=synthetic", "stage.optimizer.lr=1e-3"], None)  # crashed before metrics.json
    _job(tmp_path, "10", ["data=synthetic", "stage.optimizer.lr=3e-5"], {"val/R@0.5": 0.5, "val/loss": 0.5})
    (tmp_path / "not_a_job").mkdir()

    ranked = write_summary(tmp_path, "val/R@0.5")
    assert [j.job for j in ranked] == ["1", "10", "0", "2"]
    assert ranked[-1].status == "no metrics.json"
    assert [j.job for j in write_summary(tmp_path, "val/loss")] == ["10", "0", "1", "2"], "losses: lower is better"
    assert [j.job for j in write_summary(tmp_path, None)] == ["0", "1", "2", "10"], "no metric: job order"

    table = (tmp_path / SUMMARY_MD).read_text()
    assert "data=synthetic" not in table, "overrides every job shares are not repeated"
    assert "| 2 | `stage.optimizer.lr=1e-3` | – | – | no metrics.json |" in table


def test_metric_modes() -> None:
    assert metric_mode("val/R@0.5") == "max" and metric_mode("test/mIoU") == "max"
    assert metric_mode("val/loss") == "min" and metric_mode("val/t2v_median_rank") == "min"


def test_damo_train_help_says_how_to_call_it_and_lists_the_groups() -> None:
    done = subprocess.run([sys.executable, "-m", "damo_lit.cli.train", "--help"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("damo-train: one DaMO training stage")
    assert "experiment: paper_stage3_charades, tiny_smoke" in done.stdout
    assert "stage: stage1_align, stage2_bridge, stage3_temporal, stage4_dialogue" in done.stdout
    groups = done.stdout.split("== Configuration groups")[1].split("== The composed config")[0]
    assert "backend:" not in groups, "damo-augment's group is no choice of damo-train"
    assert "data: activitynet_captions, caption_list, charades_sta, damo_jsonl, qvhighlights" in groups  # no common
    assert "== The composed config" in done.stdout and "optimized_metric: null" in done.stdout
