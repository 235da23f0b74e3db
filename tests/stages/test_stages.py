"""Every stage trains on damo_tiny and its loss falls; stage N starts from stage N-1's weights."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from safetensors.torch import load_file

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run, run
from damo_lit.metrics.spans import best_iou
from damo_lit.stages.schedule import warmup_cosine

STAGES = ["stage1_align", "stage2_bridge", "stage3_temporal", "stage4_dialogue"]


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("stage", STAGES)
def test_stage_loss_falls_on_a_repeated_batch(stage: str, tiny_overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_run("train", [f"stage={stage}", *tiny_overrides, "trainer.max_steps=12",
                                "trainer.overfit_batches=1", "trainer.max_epochs=100", "trainer.limit_val_batches=0",
                                "stage.optimizer.lr=2e-3", "stage.scheduler.warmup_ratio=0.0",
                                "callbacks.model_checkpoint=null"], tmp_path)
    stage_module, datamodule, trainer = build_run(cfg)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(stage_module, datamodule=datamodule)
    losses = recorder.losses
    assert len(losses) == 12
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = losses[0], sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"{stage}: loss did not fall: {losses}"
    # The stage wrote what the next stage starts from.
    assert (tmp_path / "weights.safetensors").is_file()
    meta = json.loads((tmp_path / "stage.json").read_text())
    assert meta["stage"] == stage.split("_")[0] and meta["steps"] == 12


def test_the_summary_counts_what_each_stage_trains(tiny_overrides: list[str], tmp_path: Path) -> None:
    """damo-model summary's per-stage figures are the stages' own: stage 1's VTM head and
    temperature once went uncounted."""
    from damo_lit.cli.model import summary_command

    counted = summary_command(["format=json", f"paths.cache_dir={tmp_path}"])["trainable"]
    for stage in ("stage1_align", "stage4_dialogue"):
        module = build_run(compose_run("train", [f"stage={stage}", *tiny_overrides], tmp_path / stage))[0]
        trains = sum(p.numel() for p in module.parameters() if p.requires_grad)
        assert counted[stage.split("_")[0]] == trains, stage


def test_a_fit_of_zero_steps_writes_no_stage_weights(tiny_overrides: list[str], tmp_path: Path) -> None:
    """Weights of no training would pass for a trained stage in the next stage's init_from."""
    cfg = compose_run("train", ["stage=stage3_temporal", *tiny_overrides, "trainer.max_steps=2",
                                "trainer.limit_train_batches=0", "test_after_fit=false"], tmp_path)
    with pytest.raises(ValueError, match=r"fit trained 0 steps, so no stage weights are written .* "
                                         r"trainer\.limit_train_batches \(0\)"):
        run(cfg)
    assert not (tmp_path / "weights.safetensors").exists()
    cfg = compose_run("train", ["stage=stage3_temporal", *tiny_overrides, "trainer.max_steps=0", "test_after_fit=false"],
                      tmp_path / "no_steps")
    with pytest.raises(ValueError, match=r"comes to 0 \(trainer\.max_steps=0, .*\): set trainer\.max_steps > 0"):
        run(cfg)


def test_handoff_loads_previous_stage_weights_by_value(tiny_overrides: list[str], tmp_path: Path) -> None:
    prev_dir, next_dir = tmp_path / "stage2", tmp_path / "stage3"
    frozen = ["model.llm.trainable=false", "model.vision.trainable=false", "model.audio.trainable=false"]
    cfg = compose_run("train", ["stage=stage2_bridge", *tiny_overrides, *frozen, "trainer.max_steps=2",
                                "trainer.limit_val_batches=0", "test_after_fit=false",
                                "stage.optimizer.lr=1e-2"], prev_dir)
    run(cfg)
    saved = load_file(str(prev_dir / "weights.safetensors"))
    assert any(k.startswith("fuseformer.") for k in saved) and any(k.startswith("projector.") for k in saved)
    # Frozen pretrained parts (towers, base LM) are not in the file: a paper-size file stays small.
    assert not any(k.startswith(("vision.", "audio.")) or ".base_layer." in k for k in saved)

    fresh = build_run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *frozen], next_dir))[0]
    cfg3 = compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *frozen, f"stage.init_from={prev_dir}"],
                       next_dir)
    stage3 = build_run(cfg3)[0]
    state, fresh_state = stage3.model.state_dict(), fresh.model.state_dict()
    shared = [k for k in saved if k in state]
    assert len(shared) == len(saved), "every saved tensor must land in the stage-3 model"
    changed = 0
    for key in shared:
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0)
        changed += int(not torch.equal(fresh_state[key], saved[key]))
    assert changed > len(shared) // 2, "stage 2 trained: most loaded tensors differ from a fresh build"
    assert stage3.init_report is not None and len(stage3.init_report.loaded) == len(saved)
    assert stage3.init_report.missing == {} and stage3.init_report.missing_warning() is None

    # A deeper Fuseformer than stage 2's: the extra block cannot come from the file, and says so.
    deeper = build_run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *frozen,
                                             "model.fuseformer.depth=2", f"stage.init_from={prev_dir}"], next_dir))[0]
    missing = deeper.init_report.missing
    assert list(missing) == ["fuseformer"] and all(n.startswith("fuseformer.blocks.1.") for n in missing["fuseformer"])
    assert "fuseformer: " in deeper.init_report.missing_warning() and "fresh initialisation" in (
        deeper.init_report.missing_warning())


def test_towers_trained_earlier_travel_on_when_a_later_stage_freezes_them(tiny_overrides: list[str],
                                                                          tmp_path: Path) -> None:
    # Stage 2 trains the random-init towers; stage 3 freezes them. Its weights file must still hold
    # the trained towers (a rebuild from tiny_dir would bring back random ones), but not the stage-1
    # text encoder, which no later stage reads.
    prev_dir, next_dir = tmp_path / "stage2", tmp_path / "stage3"
    cfg = compose_run("train", ["stage=stage2_bridge", *tiny_overrides, "trainer.max_steps=2",
                                "trainer.limit_val_batches=0", "test_after_fit=false",
                                "stage.optimizer.lr=1e-2"], prev_dir)
    run(cfg)
    saved2 = load_file(str(prev_dir / "weights.safetensors"))
    towers = [k for k in saved2 if k.startswith(("vision.", "audio."))]
    assert towers, "stage 2 trains the tiny towers: they are in its file"
    frozen = ["model.vision.trainable=false", "model.audio.trainable=false"]
    cfg3 = compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *frozen, "trainer.max_steps=1",
                                 "trainer.limit_val_batches=0", "test_after_fit=false", f"stage.init_from={prev_dir}"],
                       next_dir)
    run(cfg3)
    saved3 = load_file(str(next_dir / "weights.safetensors"))
    for key in towers:
        torch.testing.assert_close(saved3[key], saved2[key], rtol=0, atol=0)
    assert not any(k.startswith(("text_encoder.", "video_proj.")) for k in saved3)

    # A run resumed from such a checkpoint, without stage.init_from, saves the towers on as well
    # (it loaded them from the checkpoint; they once went missing from its weights file).
    resumed = build_run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *frozen],
                                    tmp_path / "resumed"))[0]
    assert not any(n.startswith(("vision.", "audio.")) for n in resumed.persistent_names())
    resumed.on_load_checkpoint({"state_dict": {f"model.{k}": v for k, v in saved3.items()}})
    assert set(towers) <= resumed.persistent_names()
    # an FSDP sharded checkpoint holds no state dict here: the groups it carried are listed in its meta
    saved_meta: dict = {}
    resumed.on_save_checkpoint(saved_meta)
    assert {"vision", "audio"} <= set(saved_meta["damo"]["carried"])
    sharded = build_run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *frozen],
                                    tmp_path / "sharded"))[0]
    sharded.on_load_checkpoint({"damo": saved_meta["damo"]})
    assert set(towers) <= sharded.persistent_names()


def test_stage3_reports_grounding_metrics_and_baseline(tiny_overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_run("train", ["stage=stage3_temporal", *tiny_overrides, "data.max_samples_per_split=8",
                                "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1"], tmp_path)
    metrics = run(cfg)
    for key in ("test/R@0.3", "test/R@0.5", "test/R@0.7", "test/mIoU", "test/parse_rate",
                "test/baseline_R@0.5", "val/R@0.5"):
        assert key in metrics, f"{key} missing from {sorted(metrics)}"
        assert 0.0 <= metrics[key] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert "test/baseline_parse_rate" not in metrics, "the constant span always parses: no figure"
    assert 0.0 <= metrics["test/baseline_best_R@0.5"] <= 1.0 and "test/baseline_best_parse_rate" not in metrics
    assert (tmp_path / "adapter" / "adapter_config.json").is_file(), "LoRA adapter saved in peft format"

    # The baselines, recomputed apart: the spans fitted on the training split, stretched to each
    # test query's duration and scored against its ground truth.
    datamodule = instantiate(cfg.data, timestamps=cfg.timestamps, _convert_="partial")
    prior = datamodule.train_span_prior()
    queries = [sample.record for sample in datamodule.load_split("test").samples]
    assert metrics["test/count"] == len(queries) > 0
    for name, (start, end) in {"baseline": (prior.start, prior.end),
                               "baseline_best": (prior.best_start, prior.best_end)}.items():
        hits = [best_iou((start * q.duration, end * q.duration), q.spans) >= 0.5 for q in queries]
        assert metrics[f"test/{name}_R@0.5"] == pytest.approx(sum(hits) / len(hits)), name
    # Every synthetic query carries the modality it needs, and the figures are split by it.
    tags = Counter(q.modality for q in queries)
    assert None not in tags and {tag: metrics[f"test/count_{tag}"] for tag in tags} == dict(tags)
    assert all(f"test/R@0.5_{tag}" in metrics and f"test/mIoU_{tag}" in metrics for tag in tags)

    # Every metric of the run is {split}/{name} (Lightning's own epoch and step columns aside), the
    # learning rate included: train/lr, following the configured schedule step by step.
    with open(tmp_path / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    keys = set(rows[0])
    assert {k for k in keys if k.split("/")[0] not in ("train", "val", "test")} == {"epoch", "step"}, sorted(keys)
    logged_lr = [float(r["train/lr"]) for r in rows if r["train/lr"]]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(cfg.stage.optimizer.lr))
    schedule = warmup_cosine(optimizer, total_steps=len(logged_lr), **cfg.stage.scheduler)
    expected = []
    for _ in logged_lr:
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert len(logged_lr) == 2 and logged_lr == pytest.approx(expected, rel=1e-6), (logged_lr, expected)


def test_stage4_reports_grounding_and_dialogue_queries_apart(tiny_overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_run("train", ["stage=stage4_dialogue", *tiny_overrides, "data.max_samples_per_split=8",
                                "trainer.limit_val_batches=0"], tmp_path)
    assert list(cfg.data.eval_tasks) == ["grounding", "dialogue"]
    metrics = run(cfg)
    counts = {task: metrics[f"test/{task}_count"] for task in ("grounding", "dialogue")}
    assert all(c >= 1 for c in counts.values()) and metrics["test/count"] == sum(counts.values()), metrics
    for key in ("test/R@0.5", "test/grounding_R@0.5", "test/dialogue_R@0.5", "test/dialogue_parse_rate"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert not any(k.startswith(("test/caption_", "test/qa_")) for k in metrics)


def test_samples_of_one_video_are_encoded_once_with_the_same_result(tiny_overrides: list[str], tmp_path: Path) -> None:
    cfg = compose_run("train", ["stage=stage3_temporal", *tiny_overrides, "data.group_by_video=true",
                                "data.batch_size=6"], tmp_path)
    stage, datamodule, _ = build_run(cfg)
    datamodule.setup("fit")
    batch = next(b for b in datamodule.train_dataloader() if len(set(b["video"])) < len(b["video"]))
    stage.eval()  # BatchNorm on running statistics: rows do not depend on their batch-mates
    calls = []
    stage.model.vision.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    with torch.no_grad():
        shared = stage.media(batch)
        per_row = stage.media({k: v for k, v in batch.items() if k != "video"})
    assert calls == [len(set(batch["video"])), len(batch["video"])]
    for name in ("fusion", "video", "audio"):
        torch.testing.assert_close(getattr(shared, name), getattr(per_row, name), rtol=1e-5, atol=1e-5)


def test_stage4_starts_from_stage3_lora_and_checkpoints_leave_frozen_weights_out(
        tiny_overrides: list[str], tmp_path: Path) -> None:
    """The last handoff carries the LoRA matrices by value; the Lightning checkpoint, like
    weights.safetensors, holds no frozen tower or base-LM weight (the frozen parts rebuild from
    model_cfg, which keeps a paper-size checkpoint in MBs)."""
    prev_dir, next_dir = tmp_path / "stage3", tmp_path / "stage4"
    frozen = ["model.llm.trainable=false", "model.vision.trainable=false", "model.audio.trainable=false"]
    run(compose_run("train", ["stage=stage3_temporal", *tiny_overrides, *frozen, "trainer.max_steps=2",
                              "trainer.limit_val_batches=0", "test_after_fit=false", "stage.optimizer.lr=1e-2"],
                    prev_dir))
    saved = load_file(str(prev_dir / "weights.safetensors"))
    lora = [k for k in saved if ".lora_A." in k or ".lora_B." in k]
    assert lora, "stage 3 trains LoRA: its matrices are in the weights file"
    checkpoint = torch.load(prev_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    keys = list(checkpoint["state_dict"])
    assert any(".lora_B." in k for k in keys) and any(".fuseformer." in k for k in keys)
    frozen_keys = [k for k in keys if k.startswith(("model.vision.", "model.audio.")) or ".base_layer." in k]
    assert frozen_keys == [], frozen_keys[:5]

    fresh = build_run(compose_run("train", ["stage=stage4_dialogue", *tiny_overrides, *frozen], next_dir))[0]
    stage4 = build_run(compose_run("train", ["stage=stage4_dialogue", *tiny_overrides, *frozen,
                                             f"stage.init_from={prev_dir}"], next_dir))[0]
    state, fresh_state = stage4.model.state_dict(), fresh.model.state_dict()
    for key in lora:
        torch.testing.assert_close(state[key], saved[key], rtol=0, atol=0)
    trained_b = [k for k in lora if ".lora_B." in k]  # peft starts B at zero: stage 3 moved it
    assert all(not torch.equal(fresh_state[k], saved[k]) for k in trained_b)
