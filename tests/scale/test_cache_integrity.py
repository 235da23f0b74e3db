"""The feature cache knows which files its rows came from: another set with the same file names
is re-encoded by damo-cache and refused by training; damo-cache kind=stream checks its own keys
(tasks, chunk_bytes) before it reads anything."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from damo_lit.cli.cache import main
from damo_lit.cli.common import compose
from damo_lit.data.decode import DecodeParams
from damo_lit.data.features import FeatureCacheError, FeatureCacheWriter, FeatureRow, FeatureStore, file_stamp

from .conftest import FROZEN
from .helpers import cache_error

CHANGED = "videos/train_000000.mp4"  # replaced, in the copy of the set, by another video of the same name


def _on(root: Path, data_overrides: list[str]) -> list[str]:
    """The data keys of the tiny run, on the set in `root`."""
    return [f"data.root={root}", *(w for w in data_overrides if not w.startswith("data.root="))]


@pytest.fixture()
def other_set(synth_root: Path, tmp_path: Path) -> Path:
    """A copy of the set (times kept, as `cp -a` keeps them) in which one video is another one."""
    copy = shutil.copytree(synth_root, tmp_path / "other", ignore=shutil.ignore_patterns("decoded"))
    (copy / CHANGED).write_bytes((synth_root / "videos" / "train_000001.mp4").read_bytes())
    return copy


def _setup_fit(overrides: list[str]) -> None:
    datamodule = instantiate(compose("train", overrides).data, _convert_="partial")
    datamodule.setup("fit")


def test_a_cache_of_other_videos_with_the_same_names_is_refused_then_re_encoded(
    data_overrides: list[str], feature_cache: Path, other_set: Path, tmp_path: Path
) -> None:
    cache = shutil.copytree(feature_cache, tmp_path / "cache")
    on_other = [*_on(other_set, data_overrides), *FROZEN, f"data.features={cache}"]
    refused = (rf"data\.features={cache}: 1 video file\(s\) changed since the cache was written \(e\.g\. "
               rf"{other_set / CHANGED}, cached as synthetic/{CHANGED}\)")  # fmt: skip
    with pytest.raises(FeatureCacheError, match=refused):
        _setup_fit(on_other)

    said = _report([*_on(other_set, data_overrides), *FROZEN, f"out={cache}", "num_workers=0"])
    assert (said["encoded"], said["reused"], said["videos"]) == (1, 15, 16), "only the changed video is encoded"
    _setup_fit(on_other)  # the cache now serves the other set ...
    with pytest.raises(FeatureCacheError, match="1 video file"):  # ... and no longer the first one
        _setup_fit([*data_overrides, *FROZEN, f"data.features={cache}"])
    store = FeatureStore(cache)
    assert store.stamp(f"synthetic/{CHANGED}") == file_stamp(other_set / CHANGED)


def _report(words: list[str]) -> dict:
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(words) == 0
    return json.loads(printed.getvalue().splitlines()[-1])


def test_a_copy_that_did_not_keep_times_and_a_missing_video_still_serve(
    data_overrides: list[str], feature_cache: Path, synth_root: Path, tmp_path: Path
) -> None:
    """Only the content decides: a copied file with a new time is the same video (its digest says
    so), and a video that is not there (training nodes without videos) cannot be checked."""
    copy = shutil.copytree(synth_root, tmp_path / "copy", ignore=shutil.ignore_patterns("decoded"))
    os.utime(copy / CHANGED, ns=(1, 1))
    (copy / "videos" / "train_000001.mp4").unlink()
    _setup_fit([*_on(copy, data_overrides), *FROZEN, f"data.features={feature_cache}"])
    # a rerun of damo-cache over the copy records the moved time: a training start then only stats it
    cache = shutil.copytree(feature_cache, tmp_path / "cache")
    said = _report([*_on(copy, data_overrides), *FROZEN, f"out={cache}", "num_workers=0"])
    assert said["encoded"] == 0 and said["reused"] == 16, "the same videos: nothing encoded again"
    assert FeatureStore(cache).stamp(f"synthetic/{CHANGED}")["mtime_ns"] == 1


def _row(key: str, stamp: dict | None, value: float) -> FeatureRow:
    return FeatureRow(key, {"vision_global": torch.full((2, 3), value)}, stamp)


def test_the_newest_row_serves_and_a_shard_of_none_is_deleted(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"first")
    writer = FeatureCacheWriter(tmp_path / "cache", {"seed": 0}, DecodeParams())
    writer.write_shard([_row("s/a.mp4", file_stamp(video), 1.0)])
    assert writer.done({"s/a.mp4": str(video)}) == {"s/a.mp4"}
    video.write_bytes(b"second")
    assert writer.done({"s/a.mp4": str(video)}) == set(), "a changed file is not cached"
    writer.write_shard([_row("s/a.mp4", file_stamp(video), 2.0)])
    writer.finish({"train": ["s/a.mp4"]})
    assert sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir()) == ["00001.safetensors"]
    store = FeatureStore(tmp_path / "cache")
    assert store.manifest["videos"] == 1 and store.rows["s/a.mp4"] == ("00001.safetensors", 0)
    store.check_unchanged({str(video): "s/a.mp4"})


def test_a_cache_without_stamps_is_read_with_a_warning_and_re_encoded_by_damo_cache(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"video")
    writer = FeatureCacheWriter(tmp_path / "cache", {"seed": 0}, DecodeParams())
    writer.write_shard([_row("s/a.mp4", None, 1.0)])  # as a cache written before stamps were
    writer.finish({"train": ["s/a.mp4"]})
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    (tmp_path / "cache" / "index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "files"}))
    with pytest.warns(UserWarning, match="made before damo-cache recorded each video's size, time and digest"):
        FeatureStore(tmp_path / "cache").check_unchanged({str(video): "s/a.mp4"})
    again = FeatureCacheWriter(tmp_path / "cache", {"seed": 0}, DecodeParams())
    assert again.done() == {"s/a.mp4"} and again.done({"s/a.mp4": str(video)}) == set()


def test_stream_keys_are_checked_before_anything_is_read(data_overrides: list[str], tmp_path: Path) -> None:
    from damo_lit.data.streaming import chunk_bytes_count

    out = tmp_path / "stream"
    said = {
        "tasks=[foo]": "damo-cache: tasks: unknown ['foo']; expected some of "
                       "['caption', 'grounding', 'qa', 'dialogue']",
        "tasks=[]": "damo-cache: tasks=[]: expected a list of some of ['caption', 'grounding', 'qa', 'dialogue'], "
                    "e.g. tasks=[grounding]",
        "chunk_bytes=abc": "damo-cache: chunk_bytes=abc: expected a size of at least 1 byte such as 64MB, 512KB, "
                           "1.5GB or a number of bytes",
        "chunk_bytes=0MB": "damo-cache: chunk_bytes=0MB: expected a size of at least 1 byte such as 64MB, 512KB, "
                           "1.5GB or a number of bytes",
    }  # fmt: skip
    for word, message in said.items():
        assert cache_error("kind=stream", *data_overrides, f"out={out}", word) == message
    assert not out.exists(), "refused before the output folder is made"
    assert [chunk_bytes_count(v) for v in ("64MB", "1.5gb", " 512 KB", 1000, "1000")] == [
        64_000_000, 1_500_000_000, 512_000, 1000, 1000]
