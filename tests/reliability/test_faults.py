"""Fault injection: `damo-data synth --faults` breaks a share of the videos and says which; stage 3
trains to the end on such a set, names and counts every bad file, and trains on every good sample."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import lightning as L
import pytest

from damo_lit.cli.common import compose_run
from damo_lit.cli.data import main as damo_data
from damo_lit.cli.train import build_run
from damo_lit.data.decode import DecodeError, DecodeParams, decode_video
from damo_lit.data.schema import read_jsonl
from damo_lit.data.synthetic import (
    FAULT_KINDS, LAYOUT_VERSION, UNDECODABLE_FAULTS, SynthConfig, absent_videos, ensure_generated, iter_plans,
    manifest_path, read_faults,
)  # fmt: skip

from .conftest import FAULTY
from .helpers import run_overrides

PARAMS = DecodeParams(num_frames=4, frame_size=16, num_audio_segments=2, audio_segment_frames=10)


def test_synth_breaks_the_chosen_videos_and_names_them(faulty_root: Path) -> None:
    faults = read_faults(faulty_root)
    train = {video: kind for video, kind in faults.items() if video.startswith("videos/train_")}
    assert sorted(train.values()) == sorted(FAULT_KINDS), "16 train videos x 0.25: one fault of each kind"
    assert len(faults) == 4 + 1 + 1  # val and test: 2 videos x 0.25 rounds to one each
    for video, kind in faults.items():
        path = faulty_root / video
        if kind == "missing":
            assert not path.exists()
        elif kind == "no_audio":  # a video whose plan has audio, written without its stream
            assert next(p for p in iter_plans(FAULTY) if p.video == video).audio != "none"
            decoded = decode_video(path, PARAMS)
            assert not decoded.has_audio and decoded.frame_mask.all()
        else:
            assert path.stat().st_size == (4096 if kind == "garbage" else 0)
            with pytest.raises(DecodeError, match=video.split("/")[-1]):
                decode_video(path, PARAMS)
    # Annotations are kept for every faulty video (a missing file included).
    annotated = {r.video for split in ("train", "val", "test")
                 for _, r in read_jsonl(faulty_root / "annotations" / f"{split}.jsonl")}  # fmt: skip
    assert set(faults) <= annotated
    # Faults break files only: the plans (hence the annotations) are those of a clean set.
    assert [replace(p, fault=None) for p in iter_plans(FAULTY)] == list(iter_plans(replace(FAULTY, faults=0.0)))
    assert all(p.fault is None for p in iter_plans(replace(FAULTY, faults=0.0)))


def test_damo_data_synth_faults_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "set"
    code = damo_data(["synth", "--out", str(out), "--videos", "10", "--seed", "2", "--min-seconds", "5",
                      "--max-seconds", "5", "--faults", "0.5", "--workers", "1"])  # fmt: skip
    assert code == 0
    faults = read_faults(out)
    # per split: train 8 -> 4 faults, one of each kind in turn; val 1 and test 1 -> 1 each (garbage first)
    assert "faulty videos: 6 (1 empty, 3 garbage, 1 missing, 1 no_audio)" in capsys.readouterr().out
    assert sorted(k for v, k in faults.items() if "train_" in v) == sorted(FAULT_KINDS)
    assert [k for v, k in sorted(faults.items()) if "train_" not in v] == ["garbage", "garbage"]
    assert json.loads(manifest_path(out).read_text())["config"]["faults"] == 0.5
    assert damo_data(["synth", "--out", str(tmp_path / "x"), "--faults", "1.5"]) == 2


def test_a_set_made_before_the_faults_option_is_still_accepted(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "annotations" / f"{split}.jsonl").write_text("")
    old = {k: v for k, v in asdict(FAULTY).items() if k != "faults"}
    manifest_path(tmp_path).write_text(json.dumps({"config": old, "layout": LAYOUT_VERSION}))
    (tmp_path / "videos").mkdir()
    for video in absent_videos(tmp_path, SynthConfig(**old)):  # stand-ins: the set is complete
        (tmp_path / video).write_bytes(b"")
    params = {k: v for k, v in old.items()}
    assert ensure_generated(tmp_path, params) is None  # no key there means the default, 0
    with pytest.raises(ValueError, match=r"faults: 0.0 there, 0.3 asked"):
        ensure_generated(tmp_path, {**params, "faults": 0.3})


class SeenSamples(L.Callback):
    """The sample ids trained on in each epoch, and those whose batch said 'no audio'."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[str]] = defaultdict(list)
        self.without_audio: set[str] = set()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.epochs[trainer.current_epoch] += batch["sample_id"]
        self.without_audio |= {s for s, a in zip(batch["sample_id"], batch["has_audio"].tolist()) if not a}


def test_stage3_trains_to_the_end_on_a_faulty_set(faulty_root: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    faults = read_faults(faulty_root)
    bad = {v for v, k in faults.items() if k in UNDECODABLE_FAULTS}
    no_audio_video = next(v for v, k in faults.items() if k == "no_audio")

    def grounding(split: str) -> list:
        return [r for _, r in read_jsonl(faulty_root / "annotations" / f"{split}.jsonl") if r.task == "grounding"]

    train, val = grounding("train"), grounding("val")
    good = sorted(r.id for r in train if r.video not in bad)
    assert len(good) < len(train)
    cfg = compose_run("train", run_overrides(faulty_root, "trainer.max_epochs=2", "callbacks.model_checkpoint=null"),
                      tmp_path)
    stage, datamodule, trainer = build_run(cfg)
    seen = SeenSamples()
    trainer.callbacks.append(seen)
    with caplog.at_level(logging.WARNING, logger="damo_lit"):
        trainer.fit(stage, datamodule=datamodule)

    assert trainer.current_epoch == 2 and trainer.state.finished
    for epoch in (0, 1):  # every good sample, once an epoch; nothing of a bad file
        assert sorted(seen.epochs[epoch]) == good
    # A video without its audio stream is a good sample, trained on with audio marked absent.
    assert seen.without_audio >= {r.id for r in train if r.video == no_audio_video} != set()
    # The end-of-epoch report counts the bad files of the splits fit loaded (train and val) and
    # the samples left out because of them.
    fit_bad = {v for v in bad if not v.startswith("videos/test_")}
    metrics = trainer.callback_metrics
    assert metrics["train/decode_failures"] == len(fit_bad)
    assert metrics["train/skipped_samples"] == sum(r.video in bad for r in train + val)
    # Every bad file is named in the log, with its reason, and in decode_failures.json.
    report = "\n".join(r.getMessage() for r in caplog.records if r.name == "damo_lit.stages.callbacks")
    listed = json.loads((tmp_path / "decode_failures.json").read_text())
    for video in fit_bad:
        path = str(faulty_root / video)
        assert path in report and path in listed
    assert "file not found" in report
    assert str(faulty_root / no_audio_video) not in report
    assert (tmp_path / "weights.safetensors").is_file()


def test_the_report_names_every_bad_file_once_however_many(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """120 bad files: all named in the first report (no cut at some count), none named again."""
    from types import SimpleNamespace

    from damo_lit.stages.callbacks import DecodeFailureReport

    failures = {f"/videos/bad_{i:03d}.mp4": ["zero bytes"] for i in range(120)}
    datamodule = SimpleNamespace(decode_failures=lambda: dict(failures), fixes=lambda: {})
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True, current_epoch=0, default_root_dir=str(tmp_path),
                              strategy=SimpleNamespace(reduce=lambda value, reduce_op: value))  # fmt: skip
    module = SimpleNamespace(log=lambda *args, **kwargs: None, device="cpu")
    report = DecodeFailureReport()
    report.batches = [1, 0]  # the epochs trained on their good samples
    with caplog.at_level(logging.WARNING, logger="damo_lit"):
        report.on_train_epoch_end(trainer, module)
        failures["/videos/late.mp4"] = ["truncated"]
        trainer.current_epoch = 1
        report.on_train_epoch_end(trainer, module)
    first, second = (r.getMessage() for r in caplog.records if r.name == "damo_lit.stages.callbacks")
    assert all(f"/videos/bad_{i:03d}.mp4: zero bytes" in first for i in range(120))
    assert "120 video file(s) failed to decode, 120 new" in first
    assert "121 video file(s) failed to decode, 1 new" in second and "/videos/late.mp4: truncated" in second
    assert "bad_000" not in second
    assert len(json.loads((tmp_path / "decode_failures.json").read_text())) == 121
