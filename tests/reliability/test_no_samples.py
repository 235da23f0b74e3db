"""A run with nothing to train or evaluate on never ends as a success: a split none of whose videos is
on disk is refused before training (naming data.video_dir), a fit whose every batch was empty stops
naming decode_failures.json, and an empty val or test split is named in one warning."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import lightning as L
import pytest

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run, run
from damo_lit.data.datamodule import DaMODataModule, NoSamplesError

from .helpers import run_overrides

SMALL = dict(num_frames=4, frame_size=32, num_audio_segments=2, audio_segment_frames=10, batch_size=4,
             num_workers=0, decoded_cache_dir=None)  # fmt: skip


def garbage_copy(root: Path, out: Path) -> Path:
    """The annotations of `root` beside a videos/ folder of the same names, each file garbage bytes."""
    shutil.copytree(root / "annotations", out / "annotations")
    (out / "videos").mkdir()
    for video in (root / "videos").iterdir():
        (out / "videos" / video.name).write_bytes(b"not a video" * 50)
    return out


def test_a_split_without_any_video_on_disk_is_refused_naming_video_dir(clean_root: Path) -> None:
    # data.video_dir left null: videos are looked up beside the annotation files, where none is
    module = DaMODataModule(annotations=str(clean_root / "annotations"), **SMALL)
    with pytest.raises(FileNotFoundError) as err:
        module.setup("fit")
    text = str(err.value)
    first = clean_root / "annotations" / "videos" / "train_000000.mp4"
    assert "split train" in text and "none of its 16 video(s) exists" in text and f"first missing: {first}" in text
    assert f"data.video_dir=null (the annotation file's folder, {clean_root / 'annotations'})" in text
    assert "set data.video_dir to the folder that holds them" in text
    with pytest.raises(FileNotFoundError, match=r"split test .*none of its 2 video\(s\) exists"):
        DaMODataModule(annotations=str(clean_root / "annotations"), **SMALL).setup("test")
    # some videos missing is not this error (they are skipped and reported), nor is the right folder
    DaMODataModule(annotations=str(clean_root / "annotations"), video_dir=str(clean_root), **SMALL).setup("fit")


def test_the_test_split_is_checked_before_training_when_a_test_follows(clean_root: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing test file or test video folder stops damo-train at set-up, before any training,
    not after it; without a test to follow (test_after_fit=false) the same set trains."""
    root = tmp_path / "set"
    shutil.copytree(clean_root / "annotations", root / "annotations")
    (root / "videos").symlink_to(clean_root / "videos")
    (root / "annotations" / "test.jsonl").unlink()
    with_test = [o for o in run_overrides(root, "trainer.max_steps=1") if o != "test_after_fit=false"]
    with pytest.raises(FileNotFoundError, match=r"test\.jsonl not found .*the test split is used after training, "
                                                r"so it is checked before \(damo-train test_after_fit=false"):
        run(compose_run("train", with_test, tmp_path / "run1"))
    assert not (tmp_path / "run1" / "weights.safetensors").exists()
    run(compose_run("train", [*with_test, "test_after_fit=false"], tmp_path / "run2"))
    assert (tmp_path / "run2" / "weights.safetensors").is_file()
    # a test that fails after training leaves fit's own figures in metrics.json
    shutil.copy(clean_root / "annotations" / "test.jsonl", root / "annotations" / "test.jsonl")
    monkeypatch.setattr(L.Trainer, "test", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("test broke")))
    with pytest.raises(RuntimeError, match="test broke"):
        run(compose_run("train", with_test, tmp_path / "run3"))
    assert "train/loss" in json.loads((tmp_path / "run3" / "metrics.json").read_text())

    partial = tmp_path / "partial"  # train and test videos: val's are not all needed
    (partial / "videos").mkdir(parents=True)
    for video in (clean_root / "videos").glob("t*.mp4"):
        (partial / "videos" / video.name).symlink_to(video)
    module = DaMODataModule(annotations=str(clean_root / "annotations"), video_dir=str(partial), **SMALL)
    module.fit_also_sets_up = ("test",)
    module.setup("fit")
    assert set(module.datasets) == {"train", "val", "test"}
    for video in (partial / "videos").glob("test_*.mp4"):
        video.unlink()
    module = DaMODataModule(annotations=str(clean_root / "annotations"), video_dir=str(partial), **SMALL)
    module.fit_also_sets_up = ("test",)
    with pytest.raises(FileNotFoundError, match=r"split test .*none of its 2 video\(s\) exists"):
        module.setup("fit")


def test_an_empty_val_split_is_named_in_one_warning(clean_root: Path, tmp_path: Path) -> None:
    shutil.copytree(clean_root / "annotations", tmp_path / "annotations")
    (tmp_path / "annotations" / "val.jsonl").write_text("")
    module = DaMODataModule(annotations=str(tmp_path / "annotations"), video_dir=str(clean_root), **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.setup("fit")
        module.setup("validate")  # set up already: not warned again
    named = [str(w.message) for w in caught if "no samples" in str(w.message)]
    assert named == [f"data damo_jsonl, split val ({tmp_path / 'annotations' / 'val.jsonl'}): no samples, validation "
                     "is skipped: it has no records of task(s) grounding"]  # fmt: skip


def test_a_training_split_whose_videos_all_failed_to_decode_stops_fit_and_lists_them(clean_root: Path,
                                                                                    tmp_path: Path) -> None:
    """With the decoded cache, every file is known bad before fit: no training sample is left, and
    fit stops at set-up, with decode_failures.json written (no epoch ran to write it)."""
    root = garbage_copy(clean_root, tmp_path / "set")
    run_dir = tmp_path / "run"
    cfg = compose_run("train", run_overrides(root, "trainer.max_steps=2", "callbacks.model_checkpoint=null"), run_dir)
    stage, datamodule, trainer = build_run(cfg)
    with pytest.raises(NoSamplesError, match=r"split train .*: no training sample: all \d+ sample\(s\) were left out "
                                             r"because their videos failed to decode"):  # fmt: skip
        trainer.fit(stage, datamodule=datamodule)
    listed = json.loads((run_dir / "decode_failures.json").read_text())
    assert {str(root / "videos" / f"train_{i:06d}.mp4") for i in range(16)} <= set(listed)
    assert not (run_dir / "weights.safetensors").exists()


def test_a_fit_whose_every_batch_was_empty_stops_at_the_end_of_its_first_epoch(clean_root: Path,
                                                                               tmp_path: Path) -> None:
    """Without the decoded cache, the files fail in the collate: each batch is None and Lightning skips
    it. A step-limited run would loop for ever (no step is ever taken); this one would end as a
    success after max_epochs."""
    root = garbage_copy(clean_root, tmp_path / "set")
    run_dir = tmp_path / "run"
    overrides = run_overrides(root, "data.decoded_cache_dir=null", "trainer.max_steps=50", "trainer.max_epochs=2",
                              "callbacks.model_checkpoint=null")  # fmt: skip
    stage, datamodule, trainer = build_run(compose_run("train", overrides, run_dir))
    with pytest.raises(NoSamplesError) as err:
        trainer.fit(stage, datamodule=datamodule)
    report = run_dir / "decode_failures.json"
    assert str(err.value) == ("no training sample could be decoded: every batch of epoch 0 was empty (the files "
                              f"that failed, and why: {report})")  # fmt: skip
    assert trainer.current_epoch == 0 and trainer.global_step == 0
    assert {str(root / "videos" / f"train_{i:06d}.mp4") for i in range(16)} <= set(json.loads(report.read_text()))


def test_an_epoch_without_batches_is_not_an_empty_one(tmp_path: Path) -> None:
    """A run resumed at an epoch's end trains no batch in that epoch: not a fit on nothing. Every
    rank's counts are summed (the stub reduce stands for the strategy's)."""
    from types import SimpleNamespace

    from damo_lit.stages.callbacks import DecodeFailureReport

    datamodule = SimpleNamespace(decode_failures=lambda: {}, fixes=lambda: {})
    trainer = SimpleNamespace(datamodule=datamodule, is_global_zero=True, current_epoch=1, default_root_dir=str(tmp_path),
                              strategy=SimpleNamespace(reduce=lambda value, reduce_op: value * 2))  # fmt: skip
    module = SimpleNamespace(log=lambda *args, **kwargs: None, device="cpu")
    report = DecodeFailureReport()
    report.on_train_epoch_end(trainer, module)  # no batch at all
    report.on_train_batch_end(trainer, module, None, None, 0)  # one skipped (None) batch
    with pytest.raises(NoSamplesError, match="every batch of epoch 1 was empty"):
        report.on_train_epoch_end(trainer, module)
    report.on_train_batch_end(trainer, module, None, {"sample_id": ["a"]}, 1)
    report.on_train_epoch_end(trainer, module)  # one batch trained: fine
