"""Samples and batches: a map-style dataset over records, and the collate of the batch contract.

Kept apart from the LightningDataModule so that DataLoader worker processes (started with
'forkserver') import numpy and torch only, not Lightning.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler

from damo_lit.data.cache import DecodedCache, FailureLog
from damo_lit.data.collection import Sample
from damo_lit.data.decode import DecodedVideo, DecodeError, DecodeParams
from damo_lit.data.prompts import IGNORE_INDEX, conversation, encode
from damo_lit.data.schema import Record
from damo_lit.data.timestamps import check_format

BATCH_KEYS = (
    "sample_id", "video", "task", "modality", "duration", "spans", "frames", "frame_times", "frame_mask", "audio_mel",
    "audio_times", "audio_mask", "has_audio", "padding", "input_ids", "attention_mask", "labels", "prompt_ids",
    "prompt_attention_mask", "answer_text", "question", "caption",
)  # fmt: skip


class VideoLoader:
    """Decode a file (through the decoded cache when there is one); failures go to the FailureLog.

    The last `keep` videos stay in memory: with `data.group_by_video` a batch holds several
    samples of one video in a row, and each is then read once.
    """

    def __init__(self, params: DecodeParams, cache_dir: str | None, failure_dir: str, keep: int = 4) -> None:
        self.cache = DecodedCache(cache_dir, params)
        self.failures = FailureLog(failure_dir)
        self.keep = int(keep)
        self._recent: OrderedDict[str, DecodedVideo] = OrderedDict()

    def __call__(self, path: str) -> DecodedVideo | None:
        if path in self._recent:
            self._recent.move_to_end(path)
            return self._recent[path]
        try:
            video = self.cache.load(path)
        except DecodeError as err:
            self.failures.record(err.path, err.reason)
            return None
        if self.keep > 0:
            self._recent[path] = video
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)
        return video


class EpochSampler(DistributedSampler):
    """The training order: a shuffle seeded by (seed, epoch) alone, this rank's share of it, and a
    start past the batches a checkpoint had already trained.

    A resumed run must see the order an uninterrupted one would have seen. A plain RandomSampler
    draws its order from the global RNG, which a restart resets; this one depends on the seed and
    the epoch only (Lightning calls `set_epoch` at each epoch start). Being a DistributedSampler,
    Lightning leaves it in place under DDP, so it shards for the ranks itself (num_replicas, rank).
    `resume_at(epoch, samples)` makes the first pass over `epoch` skip this rank's first `samples`
    indices (the batches trained before the checkpoint); later passes are whole.

    With `groups` (one key per index, e.g. the video of each sample) the shuffle is over groups
    and a group's indices follow each other, so a batch holds several samples of one video and
    the stage encodes that video once (`data.group_by_video`); each rank then takes a contiguous
    share, so that groups stay on one rank.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True,
                 groups: Sequence[Hashable] | None = None) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        if groups is not None and len(groups) != size:
            raise ValueError(f"EpochSampler: {len(groups)} group keys for {size} samples")
        self._members: list[list[int]] | None = None
        if groups is not None:
            members: dict[Hashable, list[int]] = {}
            for index, key in enumerate(groups):
                members.setdefault(key, []).append(index)
            self._members = list(members.values())
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, samples: int) -> None:
        """Start the next pass over `epoch` after this rank's first `samples` indices."""
        self.set_epoch(epoch)
        self._resume = (int(epoch), int(samples))

    def _grouped(self) -> list[int]:
        assert self._members is not None
        order = range(len(self._members))
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self._members), generator=generator).tolist()
        indices = [i for g in order for i in self._members[g]]
        while len(indices) < self.total_size:  # pad as DistributedSampler does: repeat from the start
            indices += indices[: self.total_size - len(indices)]
        return indices[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]

    def __iter__(self) -> Iterator[int]:
        indices = self._grouped() if self._members is not None else list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] :]
            self._resume = None
        return iter(indices)


class EvalSampler(DistributedSampler):
    """The evaluation order: every index once, in order, this rank's share, with the padding marked.

    Under DDP and FSDP every rank must run as many evaluation batches (FSDP gathers parameters in
    each forward), so DistributedSampler pads the last round by repeating the first indices: with
    2 ranks and an odd set one query would be scored twice. Here a repeat is yielded as
    `index + size`, which RecordDataset serves as the same sample marked `padding`, and the stages
    leave padding out of their metrics: the figures are those of one process.
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.size = size

    def __iter__(self) -> Iterator[int]:
        positions = range(self.rank, self.total_size, self.num_replicas)
        return iter(p if p < self.size else p % self.size + self.size for p in positions)


class RecordDataset(Dataset):
    """Samples as dicts of numpy arrays and token ids; None for a sample whose video failed."""

    def __init__(
        self,
        samples: Sequence[Sample],
        loader: VideoLoader,
        tokenizer: Any,
        timestamps: str,
        prompt_style: str,
    ) -> None:
        self.samples = list(samples)
        self.loader = loader
        self.tokenizer = tokenizer
        self.timestamps = check_format(timestamps)
        self.prompt_style = prompt_style

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        padding = index >= len(self.samples)  # EvalSampler's repeat of a sample another rank scores
        sample = self.samples[index - len(self.samples) if padding else index]
        video = self.loader(sample.video_path)
        if video is None:
            return None
        item = sample_item(sample.record, video, self.tokenizer, self.timestamps, self.prompt_style,
                           video_key=sample.video_path)
        item["padding"] = padding
        return item


def sample_item(record: Record, video: Any, tokenizer: Any, timestamps: str, prompt_style: str,
                video_key: str | None = None) -> dict[str, Any]:
    """One sample for the Collator: the record's rendered text and token ids beside its decoded
    video (or cached features). Shared by the map-style and the streaming datasets.

    video_key names the video uniquely across sources (the batch's `video`; default record.video):
    samples with equal keys share one encoding in the stage."""
    conv = conversation(record, timestamps)
    encoded = encode(conv.turns, tokenizer, prompt_style)
    return {
        "sample_id": record.id,
        "video_key": video_key or record.video,
        "task": record.task,
        "modality": record.modality,
        "duration": record.duration,
        "spans": [tuple(s) for s in conv.spans],
        "video": video,
        "input_ids": encoded.input_ids,
        "labels": encoded.labels,
        "prompt_ids": encoded.prompt_ids,
        "answer_text": conv.answer_text,
        "question": next((text for role, text in reversed(conv.turns[:-1]) if role == "user"), ""),
        "caption": conv.caption,
    }


# The media keys of a decoded batch and their dtypes (docs/contracts.md).
MEDIA_FIELDS: dict[str, torch.dtype | None] = {
    "frames": torch.uint8, "frame_times": torch.float32, "frame_mask": torch.bool, "audio_mel": torch.float32,
    "audio_times": torch.float32, "audio_mask": torch.bool,
}  # fmt: skip


def _stack(values: Sequence[Any], dtype: torch.dtype | None) -> torch.Tensor:
    """Stack numpy arrays or tensors along a new batch dimension; dtype None keeps theirs."""
    out = torch.stack([torch.as_tensor(v) for v in values])
    return out if dtype is None else out.to(dtype)


def _pad(rows: Sequence[Sequence[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if left:
                out[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            else:
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _mask(rows: Sequence[Sequence[int]], left: bool = False) -> torch.Tensor:
    return _pad([[1] * len(r) for r in rows], 0, left=left)


class Collator:
    """Stack samples into the batch contract; drop None samples (None when all of them were)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
        items = [item for item in items if item is not None]
        if not items:
            return None
        videos = [item["video"] for item in items]
        # Decoded videos give frames and mel; cached features (data.features) give tower outputs.
        fields = getattr(videos[0], "BATCH_FIELDS", MEDIA_FIELDS)
        media = {name: _stack([getattr(v, name) for v in videos], dtype) for name, dtype in fields.items()
                 if getattr(videos[0], name) is not None}  # fmt: skip

        ids = [item["input_ids"] for item in items]
        prompts = [item["prompt_ids"] for item in items]
        return {
            "sample_id": [item["sample_id"] for item in items],
            "video": [item["video_key"] for item in items],
            "task": [item["task"] for item in items],
            "modality": [item["modality"] for item in items],
            "duration": torch.tensor([item["duration"] for item in items], dtype=torch.float32),
            "spans": [list(item["spans"]) for item in items],
            **media,
            "has_audio": torch.tensor([v.has_audio for v in videos], dtype=torch.bool),
            "padding": torch.tensor([bool(item.get("padding", False)) for item in items], dtype=torch.bool),
            "input_ids": _pad(ids, self.pad_token_id),
            "attention_mask": _mask(ids),
            "labels": _pad([item["labels"] for item in items], IGNORE_INDEX),
            "prompt_ids": _pad(prompts, self.pad_token_id, left=True),
            "prompt_attention_mask": _mask(prompts, left=True),
            "answer_text": [item["answer_text"] for item in items],
            "question": [item["question"] for item in items],
            "caption": [item["caption"] for item in items],
        }
