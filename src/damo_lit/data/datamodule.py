"""The LightningDataModule: records -> decoded videos + token ids -> batches of the batch contract.

- Records come from one or more sources (mixed by weight on the training split) and are
  filtered by task per split (`train_tasks` for train, `eval_tasks` for val/test), e.g. stage 1
  trains on captions, stage 3 on grounding, stage 4 on dialogues.
- `prepare_data()` generates the synthetic set when it is absent (`generate:` in the config)
  and fills the decoded cache with a process pool; files that fail are recorded as bad.
- A sample whose video cannot be decoded is skipped: the dataset returns None and records the
  failure (file named in a warning, counted across worker processes), the collate drops it,
  and every good sample of the batch still comes through. `decode_failures()` exposes the
  counts for a Lightning callback to log (damo_lit.stages.callbacks.DecodeFailureReport does).
- The training DataLoader shuffles with an `EpochSampler`: the order depends on (seed, epoch)
  only and each rank takes its share (Lightning keeps a DistributedSampler as it is). The
  datamodule's `state_dict()` (in every Lightning checkpoint) holds where training stood - the
  epoch and the batches trained in it - so that a resumed run continues the same shuffled order
  after those batches instead of restarting the epoch. Evaluation loaders are sequential (Lightning
  shards them under DDP). Worker processes use a 'forkserver' context (fork after torch deadlocks).
- `features=DIR` (a frozen-encoder feature cache made by `damo-cache`, damo_lit.data.features):
  no decoding at all; batches carry the cached tower outputs instead of frames / audio_mel.
  The cache must have been made with this model's encoder config (`features_model`, the
  composed `model` node) and the towers must be frozen.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from damo_lit.data.cache import prepare, warn_bad
from damo_lit.data.collection import Sample, SplitRecords, cap_samples, check_tasks, load_split, source_specs
from damo_lit.data.dataset import BATCH_KEYS, Collator, EpochSampler, EvalSampler, RecordDataset, VideoLoader
from damo_lit.data.decode import DecodeParams, worker_context
from damo_lit.data.features import (
    FORMAT as FEATURES_FORMAT, MANIFEST as FEATURES_MANIFEST, FeatureCacheError, FeatureLoader, FeatureStore,
    read_manifest, trainable_towers, video_key,
)  # fmt: skip
from damo_lit.data.prompts import PROMPT_STYLES
from damo_lit.data.sources.base import SPLITS
from damo_lit.data.timestamps import check_format

__all__ = ["BATCH_KEYS", "Collator", "DaMODataModule", "EpochSampler", "NoSamplesError", "RecordDataset", "SpanPrior",
           "TrainPosition", "VideoLoader"]

# The split each Lightning stage is about: its videos must be on disk (setup refuses it otherwise).
MAIN_SPLIT = {"fit": "train", "validate": "val", "test": "test", "predict": "test"}
SKIPPED = {"val": "validation is skipped", "test": "testing is skipped"}


class NoSamplesError(ValueError):
    """A split left with no sample to train or evaluate on (no records of its tasks, or no video
    that decodes): a run on it would end as a success having done nothing."""


@dataclass(frozen=True)
class SpanPrior:
    """Constant-span baselines fitted on the training grounding records, as shares of the video's
    length: the mean relative span (start, end; the runs' `test/baseline_*`) and the one relative
    span with the best training R@0.5 (best_start, best_end; `test/baseline_best_*`), which is the
    stronger guess where events start anywhere in a video. None for a prior saved before it existed."""

    start: float
    end: float
    count: int
    best_start: float | None = None
    best_end: float | None = None

    @classmethod
    def fit(cls, spans: Sequence[tuple[float, float]], durations: Sequence[float]) -> "SpanPrior":
        """Both priors from the first span (seconds) of each training grounding record and its video's duration."""
        from damo_lit.metrics.spans import best_relative_span

        rel = np.asarray(spans, dtype=np.float64) / np.asarray(durations, dtype=np.float64)[:, None]
        best = best_relative_span(spans, durations)
        return cls(float(rel[:, 0].mean()), float(rel[:, 1].mean()), len(spans), *best)

    def span(self, duration: float) -> tuple[float, float]:
        return self.start * duration, self.end * duration


@dataclass(frozen=True)
class TrainPosition:
    """Where training stood when a checkpoint was saved: `batches` of `epoch` trained (per rank), and
    what those batches depended on, so that a resumed run can tell whether it may skip them."""

    epoch: int
    batches: int
    batch_size: int
    samples: int
    world_size: int
    seed: int
    grouped: int = 0  # data.group_by_video (0/1): it changes the order

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}

    def mismatch(self, now: "TrainPosition") -> list[str]:
        """What changed since the checkpoint (differences that make skipping its batches wrong)."""
        keys = ("batch_size", "samples", "world_size", "seed", "grouped")
        return [f"{k} {getattr(self, k)} -> {getattr(now, k)}" for k in keys if getattr(self, k) != getattr(now, k)]


class DaMODataModule(L.LightningDataModule):
    """Data for every stage; built from conf/data/*.yaml by Hydra (see docs/data.md for the keys)."""

    def __init__(
        self,
        format: str = "damo_jsonl",
        annotations: str | None = None,
        video_dir: str | None = None,
        durations: str | Sequence[str] | None = None,
        splits: dict[str, str | None] | None = None,
        video_ext: str = ".mp4",
        columns: dict[str, str] | None = None,
        sources: Sequence[dict[str, Any]] | None = None,
        weight: float = 1.0,
        name: str | None = None,
        root: str | None = None,
        generate: dict[str, Any] | None = None,
        train_tasks: Sequence[str] = ("caption", "grounding", "qa", "dialogue"),
        eval_tasks: Sequence[str] = ("grounding",),
        timestamps: str = "relative",
        prompt_style: str = "plain",
        num_frames: int = 32,
        frame_size: int | Sequence[int] = 64,
        num_audio_segments: int = 32,
        audio_segment_frames: int = 50,
        n_mels: int = 80,
        sample_rate: int = 16000,
        decoded_cache_dir: str | None = None,
        prepare_workers: int = 2,
        batch_size: int = 16,
        group_by_video: bool = False,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        max_samples_per_split: int | None = None,
        on_bad_window: str = "clip",
        on_bad_record: str = "error",
        seed: int = 0,
        features: str | None = None,
        features_model: dict[str, Any] | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        options = dict(
            format=format, annotations=annotations, video_dir=video_dir, durations=durations, splits=splits,
            video_ext=video_ext, columns=columns, sources=list(sources or []), weight=weight, name=name,
            on_bad_window=on_bad_window, on_bad_record=on_bad_record,
        )  # fmt: skip
        self.specs = source_specs(options)
        self.name = name or self.specs[0].label
        self.root = root
        self.generate = dict(generate) if generate else None
        self.train_tasks = check_tasks(train_tasks, "data.train_tasks")
        self.eval_tasks = check_tasks(eval_tasks, "data.eval_tasks")
        self.timestamps = check_format(timestamps)
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"data.prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {prompt_style!r}")
        self.prompt_style = prompt_style
        size = int(frame_size) if isinstance(frame_size, (int, str)) else tuple(int(v) for v in frame_size)
        self.params = DecodeParams(
            num_frames=int(num_frames),
            frame_size=size,  # type: ignore[arg-type]
            num_audio_segments=int(num_audio_segments),
            audio_segment_frames=int(audio_segment_frames),
            sample_rate=int(sample_rate),
            n_mels=int(n_mels),
        )
        self.decoded_cache_dir = str(decoded_cache_dir) if decoded_cache_dir else None
        self.prepare_workers = int(prepare_workers)
        self.batch_size = int(batch_size)
        self.group_by_video = bool(group_by_video)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        if max_samples_per_split is not None and int(max_samples_per_split) < 1:
            raise ValueError(f"data.max_samples_per_split must be >= 1 or null, got {max_samples_per_split}")
        self.max_samples_per_split = int(max_samples_per_split) if max_samples_per_split else None
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.splits: dict[str, SplitRecords] = {}
        self.datasets: dict[str, RecordDataset] = {}
        # Splits that setup("fit") prepares too, as if each were its stage's own: damo-train sets
        # ("test",) when a test follows training, so that a missing test file or video folder stops
        # the run before hours of training, not after.
        self.fit_also_sets_up: tuple[str, ...] = ()
        # made by the first decode failure only: a run that none hits (or a process killed before
        # it cleans up) leaves no empty folder behind in the temp dir
        self._failure_dir = str(Path(tempfile.gettempdir()) / f"damo-decode-failures-{uuid.uuid4().hex}")
        weakref.finalize(self, shutil.rmtree, self._failure_dir, True)
        self.loader = VideoLoader(self.params, self.decoded_cache_dir, self._failure_dir)
        self.features = str(features) if features else None
        self.features_model = dict(features_model) if features_model else None
        self.feature_store: FeatureStore | None = None
        self._resume: TrainPosition | None = None
        if self.features:
            towers = trainable_towers(self.features_model or {})
            if towers:
                raise FeatureCacheError(
                    f"data.features={self.features} replaces the towers by their cached outputs, so they must be "
                    f"frozen: set {'=false '.join(towers)}=false (the cache is only valid while they never change)"
                )

    # ---------------------------------------------------------------------------------------
    def set_tokenizer(self, tokenizer: Any) -> None:
        """Any HF tokenizer with a `<video>` special token and a pad token."""
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs a pad token (tokenizer.pad_token = ...)")
        self.tokenizer = tokenizer
        for dataset in self.datasets.values():
            dataset.tokenizer = tokenizer

    def tasks_for(self, split: str) -> tuple[str, ...]:
        return self.train_tasks if split == "train" else self.eval_tasks

    def load_split(self, split: str) -> SplitRecords:
        """The samples of a split, task-filtered, mixed by weight (train) and capped."""
        loaded = load_split(self.specs, split, self.tasks_for(split), weighted=split == "train", seed=self.seed)
        if self.max_samples_per_split:
            loaded = cap_samples(loaded, self.max_samples_per_split)
        return loaded

    def prepare_data(self) -> None:
        """Generate the synthetic set when absent, then decode every video into the cache once."""
        if self.generate is not None:
            if not self.root:
                raise ValueError("data.generate is set but data.root is not: where should the set be generated?")
            from damo_lit.data.synthetic import ensure_generated

            ensure_generated(self.root, self.generate)
        if self.decoded_cache_dir is None or self.features:
            return
        paths: set[str] = set()
        for split in SPLITS:
            try:
                paths.update(self.load_split(split).video_paths())
            except FileNotFoundError:
                continue  # a split this source does not have
        report = prepare(sorted(paths), self.decoded_cache_dir, self.params, self.prepare_workers)
        warn_bad(report.bad)

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        if stage == "fit" and not any(spec.has_split_files() for spec in self.specs):
            warnings.warn(
                f"data {self.name}: data.annotations ({self.specs[0].annotations}) serves every split, so validation "
                "runs on the training records; set data.splits.train / data.splits.val to separate them",
                UserWarning,
                stacklevel=2,
            )
        ahead = self.fit_also_sets_up if stage == "fit" else ()
        for split in (*wanted.get(stage, SPLITS), *ahead) if stage else SPLITS:
            if split in self.datasets:
                continue
            try:
                loaded = self.load_split(split)
            except FileNotFoundError as error:
                if split not in ahead:
                    raise
                raise FileNotFoundError(f"{error}; the {split} split is used after training, so it is checked "
                                        "before (damo-train test_after_fit=false trains without a test)") from error
            records = len(loaded.samples)
            loader: Any = self.loader
            if self.features:
                loaded.samples, loader = self._from_features(split, loaded.samples)
            else:
                if split == MAIN_SPLIT.get(stage or "") or split in ahead:
                    self._check_videos_present(split, loaded.samples)
                if self.decoded_cache_dir is not None:
                    loaded.samples = self._without_known_bad(loaded.samples)
            if not loaded.samples:
                self._empty_split(split, records, training=stage == "fit")
            self.splits[split] = loaded
            self.datasets[split] = RecordDataset(
                loaded.samples, loader, self.tokenizer, self.timestamps, self.prompt_style
            )

    def split_files(self, split: str) -> list[str]:
        """The annotation files a split's records come from, one per source that has the split."""
        files = []
        for spec in self.specs:
            try:
                files.append(str(spec.annotation_file(split)))
            except ValueError:
                continue
        return files

    def describe_split(self, split: str) -> str:
        """`data NAME, split SPLIT (annotation files)`: where a split's records come from, for messages."""
        files = self.split_files(split)
        return f"data {self.name}, split {split}" + (f" ({', '.join(files)})" if files else "")

    def _check_videos_present(self, split: str, samples: Sequence[Sample]) -> None:
        """Refuse a split none of whose videos is on disk: the video folder is wrong, and every sample
        would otherwise be skipped one by one and the run end as a success on nothing. One stat when
        the first video is there."""
        paths = list(dict.fromkeys(s.video_path for s in samples))
        if not paths or any(Path(p).is_file() for p in paths):
            return
        folders = "; ".join(
            f"{spec.key}.video_dir={spec.video_dir}" if spec.video_dir
            else f"{spec.key}.video_dir=null (the annotation file's folder, {spec.annotation_file(split).parent})"
            for spec in self.specs
        )  # fmt: skip
        key = f"{self.specs[0].key}.video_dir" if len(self.specs) == 1 else "each source's video_dir"
        raise FileNotFoundError(
            f"{self.describe_split(split)}: none of its {len(paths)} video(s) exists (first missing: {paths[0]}); "
            f"record videos are looked up under {folders}: set {key} to the folder that holds them"
        )

    def _empty_split(self, split: str, records: int, training: bool) -> None:
        """A split with no sample: an error for the training split (fit), a warning naming it otherwise."""
        listed = "decode_failures.json in the run folder lists them" if training else "each named in a warning above"
        why = (f"all {records} sample(s) were left out because their videos failed to decode ({listed})" if records
               else f"it has no records of task(s) {', '.join(self.tasks_for(split))}")  # fmt: skip
        if training and split == "train":
            raise NoSamplesError(f"{self.describe_split(split)}: no training sample: {why}")
        warnings.warn(f"{self.describe_split(split)}: no samples, {SKIPPED.get(split, 'nothing to run')}: {why}",
                      UserWarning, stacklevel=3)  # fmt: skip

    def feature_cache_signature(self) -> tuple[str, dict[str, Any]] | None:
        """(where, encoder signature) of the feature cache this data reads; None when it decodes media.
        The training run checks the signature's tower-weights digest against its model."""
        if not self.features:
            return None
        manifest = read_manifest(Path(self.features) / FEATURES_MANIFEST, FEATURES_FORMAT, "data.features",
                                 f"damo-cache data=... model=... out={self.features}")  # fmt: skip
        return f"data.features={self.features}", manifest.get("signature", {})

    def open_feature_store(self) -> FeatureStore:
        """The feature cache, opened once: its model config and decode settings are checked against
        this run's here (a differing key is named)."""
        if self.feature_store is None:
            self.feature_store = FeatureStore(self.features, self.features_model, self.params)
        return self.feature_store

    def check_feature_cache(self) -> None:
        """Check the feature cache this data reads against this run's model config and decode
        settings (naming a differing key); the training run calls it before the tower-weights check."""
        if self.features:
            self.open_feature_store()

    def _from_features(self, split: str, samples: list[Sample]) -> tuple[list[Sample], FeatureLoader]:
        """The samples the feature cache serves (videos that failed to decode left out and counted),
        and the loader that reads their rows; an error when the cache lacks some video."""
        store = self.open_feature_store()
        kept, keys, missing = [], {}, []
        for sample in samples:
            key = video_key(sample)
            if key in store.bad:
                self.loader.failures.record(sample.video_path, store.bad[key])
            elif key in store:
                kept.append(sample)
                keys[sample.video_path] = key
            else:
                missing.append(key)
        if missing:
            raise FeatureCacheError(
                f"data.features={self.features} has no features for {len(set(missing))} video(s) of split {split} "
                f"(e.g. {sorted(set(missing))[:3]}); rerun damo-cache with this data config to add them"
            )
        return kept, FeatureLoader(store, keys)

    def _without_known_bad(self, samples: list[Sample]) -> list[Sample]:
        """Leave out (and record as skipped) samples whose file is missing or recorded bad in the cache,
        so that a batch is practically never empty: under DDP every rank must step together."""
        verdict: dict[str, str | None] = {}
        kept = []
        for sample in samples:
            if sample.video_path not in verdict:
                verdict[sample.video_path] = self.loader.cache.known_bad(sample.video_path)
            reason = verdict[sample.video_path]
            if reason is None:
                kept.append(sample)
            else:
                self.loader.failures.record(sample.video_path, reason)
        return kept

    def _dataloader(self, split: str, shuffle: bool) -> DataLoader:
        if self.tokenizer is None:
            raise RuntimeError("DaMODataModule has no tokenizer: call set_tokenizer(tokenizer) before the dataloaders")
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        dataset = self.datasets[split]
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=self._train_sampler(len(dataset), self._video_keys(dataset) if self.group_by_video else None)
            if shuffle else self._eval_sampler(len(dataset)),
            num_workers=workers,
            collate_fn=Collator(self.tokenizer.pad_token_id),
            multiprocessing_context=worker_context() if workers > 0 else None,
            persistent_workers=workers > 0,
            # Worker seeds come from this generator, not from the global RNG: starting an epoch's
            # workers then draws nothing from the RNG that dropout uses (exact resume).
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
        )

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)

    @staticmethod
    def _video_keys(dataset: Any) -> list[str] | None:
        samples = getattr(dataset, "samples", None)
        return [s.video_path for s in samples] if samples is not None else None

    def _eval_sampler(self, size: int) -> EvalSampler:
        world, rank = self._ranks()
        return EvalSampler(size, num_replicas=world, rank=rank)

    def _train_sampler(self, size: int, groups: Sequence[str] | None = None) -> EpochSampler:
        world, rank = self._ranks()
        sampler = EpochSampler(size, num_replicas=world, rank=rank, seed=self.seed, shuffle=True, groups=groups)
        saved = self._resume
        if saved is not None:
            if self._resume_changes(size):
                sampler.set_epoch(saved.epoch)
            else:
                sampler.resume_at(saved.epoch, saved.batches * self.batch_size)
        return sampler

    def _resume_changes(self, samples: int, also: Sequence[str] = ()) -> list[str]:
        """What changed since the checkpoint's training position (`samples`: this run's training
        samples; `also`: changes a subclass found) that makes skipping its trained batches wrong;
        warns that the epoch restarts then."""
        saved = self._resume
        if saved is None:
            return []
        world, _ = self._ranks()
        changed = saved.mismatch(TrainPosition(saved.epoch, saved.batches, self.batch_size, samples, world, self.seed,
                                               int(self.group_by_video))) + list(also)  # fmt: skip
        if changed:
            warnings.warn(
                f"resuming: the training data changed since the checkpoint ({', '.join(changed)}), so its "
                f"{saved.batches} trained batch(es) of epoch {saved.epoch} cannot be skipped exactly; that epoch "
                "starts again from its first batch",
                RuntimeWarning,
                stacklevel=3,
            )
        return changed

    def train_dataloader(self) -> DataLoader:
        return self._dataloader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._dataloader("test", shuffle=False)

    # -- exact resume ---------------------------------------------------------------------------
    def train_position(self) -> TrainPosition | None:
        """Where the attached trainer stands in training: the epoch and the batches of it trained
        (a finished epoch counts as the start of the next). None outside of training."""
        trainer, samples = self.trainer, self._train_samples()
        if trainer is None or samples is None:
            return None
        loop = trainer.fit_loop
        batches = int(loop.epoch_loop.batch_progress.current.processed)
        epoch = int(trainer.current_epoch)
        total = trainer.num_training_batches
        if math.isfinite(total) and batches >= total:
            epoch, batches = epoch + 1, 0
        world, _ = self._ranks()
        return TrainPosition(epoch, batches, self.batch_size, samples, world, self.seed, int(self.group_by_video))

    def _train_samples(self) -> int | None:
        """The training samples of an epoch (all ranks); None until the training data is set up."""
        dataset = self.datasets.get("train")
        return len(dataset) if dataset is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Saved in every Lightning checkpoint: the training position (plain ints)."""
        position = self.train_position()
        return {"train_position": position.to_dict()} if position is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored from a checkpoint before the loaders are built: the next training loader starts
        where the checkpoint stood."""
        saved = state_dict.get("train_position")
        self._resume = TrainPosition(**{k: int(v) for k, v in saved.items()}) if saved else None

    # ---------------------------------------------------------------------------------------
    def train_span_prior(self) -> SpanPrior:
        """Mean (start / duration, end / duration) over the training split's grounding records."""
        loaded = load_split(self.specs, "train", ("grounding",))
        firsts = [(r.spans[0], r.duration) for r in (x.record for x in loaded.samples) if r.spans]
        if not firsts:
            raise ValueError(f"data source {self.name}: the training split has no grounding records for a span prior")
        spans, durations = zip(*firsts)
        return SpanPrior.fit(spans, durations)

    def decode_failures(self) -> dict[str, list[str]]:
        """Files that failed to decode so far, in every worker process: path -> the reason, once per
        sample skipped because of it (len(dict): files; sum of lengths: skipped samples)."""
        return self.loader.failures.files()

    def skipped_samples(self) -> int:
        """Samples skipped so far (cumulative over epochs) because their file failed to decode."""
        return self.loader.failures.skipped()

    def fixes(self) -> dict[str, dict[str, int]]:
        """Fix-up counts per loaded split."""
        return {split: dict(loaded.fixes.counts) for split, loaded in self.splits.items()}
