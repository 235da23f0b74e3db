"""data.group_by_video: a video's samples side by side in the training order, read once by the
loader and encoded once by the stage, with the same result as encoding every row."""

from __future__ import annotations

import dataclasses
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from damo_lit.data.datamodule import DaMODataModule
from damo_lit.data.dataset import EpochSampler, VideoLoader
from damo_lit.data.decode import DecodeError, DecodeParams
from damo_lit.stages.base import select_rows, shared_videos

from tests.data.test_datamodule import SMALL

GROUPS = ["a", "b", "a", "c", "b", "a", "d", "c", "e", "e"]


def _runs(order: list[int]) -> list[str]:
    """The group keys of `order`, one per run of equal keys."""
    keys = [GROUPS[i] for i in order]
    return [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]


def test_grouped_order_keeps_each_video_together_and_is_seeded() -> None:
    sampler = EpochSampler(len(GROUPS), seed=5, groups=GROUPS)
    sampler.set_epoch(0)
    first = list(sampler)
    assert sorted(first) == list(range(len(GROUPS)))
    runs = _runs(first)
    assert len(runs) == len(set(runs)) == 5  # one run per video
    again = EpochSampler(len(GROUPS), seed=5, groups=GROUPS)
    again.set_epoch(0)
    assert list(again) == first
    orders = set()
    for epoch in range(1, 6):
        sampler.set_epoch(epoch)
        orders.add(tuple(_runs(list(sampler))))
    assert len(orders) > 1  # the videos are shuffled per epoch
    sampler.resume_at(0, 3)
    assert list(sampler) == first[3:]


def test_grouped_ranks_take_contiguous_shares() -> None:
    shards = [list(EpochSampler(len(GROUPS), num_replicas=2, rank=r, seed=1, groups=GROUPS)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(len(GROUPS)))
    # at most one video is cut between the two ranks (where the order is split)
    split = set(GROUPS[i] for i in shards[0]) & set(GROUPS[i] for i in shards[1])
    assert len(split) <= 1


def test_grouped_sampler_rejects_a_wrong_number_of_keys() -> None:
    with pytest.raises(ValueError, match="3 group keys for 10 samples"):
        EpochSampler(10, groups=["a", "b", "c"])


class CountingCache:
    def __init__(self) -> None:
        self.loads: Counter[str] = Counter()

    def load(self, path: str) -> str:
        self.loads[path] += 1
        if path == "bad.mp4":
            raise DecodeError(path, "broken")
        return f"decoded {path}"


def test_loader_reads_a_repeated_video_once(tmp_path) -> None:
    loader = VideoLoader(DecodeParams(), None, str(tmp_path), keep=2)
    loader.cache = CountingCache()  # type: ignore[assignment]
    for path in ["x.mp4", "x.mp4", "y.mp4", "x.mp4", "z.mp4", "y.mp4", "bad.mp4", "bad.mp4"]:
        loader(path)
    # x stays (used again before falling out); y fell out when z came; failures are never kept
    assert loader.cache.loads == Counter({"x.mp4": 1, "y.mp4": 2, "z.mp4": 1, "bad.mp4": 2})


def test_shared_videos_and_row_selection() -> None:
    assert shared_videos(None) is None and shared_videos(["a", "b"]) is None
    first, inverse = shared_videos(["a", "b", "a", "c", "b"])
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2, 1]
    batch = {"duration": torch.arange(5.0), "frames": torch.arange(5)[:, None].expand(5, 3), "question": list("abcde")}
    picked = select_rows(batch, first)
    assert set(picked) == {"duration", "frames"} and picked["duration"].tolist() == [0.0, 1.0, 3.0]


def test_train_batches_group_the_samples_of_a_video(synth_dir, tokenizer) -> None:
    module = DaMODataModule(annotations=str(synth_dir / "annotations"), video_dir=str(synth_dir), batch_size=6,
                            num_workers=0, train_tasks=["grounding"], group_by_video=True, **SMALL)
    module.set_tokenizer(tokenizer)
    module.setup("fit")
    videos = [v for batch in module.train_dataloader() for v in batch["video"]]
    per_video = Counter(s.video_path for s in module.datasets["train"].samples)
    assert max(per_video.values()) > 1, "the fixture needs videos with several grounding queries"
    runs = [v for i, v in enumerate(videos) if i == 0 or videos[i - 1] != v]
    assert len(runs) == len(per_video) and Counter(videos) == per_video
    # A checkpoint records the grouping (it changes the order): a resume across a change of it
    # restarts the saved epoch instead of skipping batches of another order.
    progress = SimpleNamespace(current=SimpleNamespace(processed=2))
    module.trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
                                     current_epoch=0, num_training_batches=100, world_size=1, global_rank=0)
    saved = module.train_position()
    assert saved is not None and (saved.batches, saved.grouped) == (2, 1)
    assert saved.mismatch(dataclasses.replace(saved, grouped=0)) == ["grouped 1 -> 0"]
