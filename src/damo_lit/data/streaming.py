"""Sharded streaming for many nodes (litdata): write once, stream from any number of ranks.

`write_stream` (run by `damo-cache kind=stream`) turns a data config into litdata datasets,
one per (split, task), under one folder:

    DIR/damo_stream.json        format, kind (video | features), the records per split and task,
                                the training span prior, the feature cache's manifest (features)
    DIR/{split}/{task}/         litdata chunks + index.json; each item is one sample: the
                                record (JSON text) and either the MP4 file's bytes (kind video)
                                or its cached tower outputs (kind features, from data.features)
    DIR/{split}/{task}/damo_written.json
                                the samples that dataset holds, written only once its write
                                finished and was checked: a rerun keeps it only then

Nothing is pickled: items hold strings, bytes, numbers and tensors only, and a stream whose
index.json names any other litdata serializer (pickle among them) is refused before litdata
opens it. Training samples of a mixture are weighted when written (the split as the datamodule
would load it).

`StreamingDataModule` (conf/data/streaming.yaml, `data.streaming_dir=DIR`) reads them with
litdata's StreamingDataset: MP4 bytes are decoded through the data layer's own decode path
(`decode_video`, from a memory-backed temporary file), text goes through the same prompt and
token code as the map-style dataset, and the same Collator makes the batch contract. Under DDP
every rank streams a disjoint share with the same number of batches (litdata's drop_last), and
a resumed run continues the epoch where its checkpoint stopped: the datamodule's state_dict holds
the training StreamingDataLoader's state and applies it to the next training loader.
A stage that trains on several tasks streams their datasets together (CombinedStreamingDataset,
iterating over all of them).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

# litdata asks PyPI for newer versions unless told not to (there is no network here).
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")

from damo_lit.data.cache import FailureLog  # noqa: E402
from damo_lit.data.collection import Sample, cap_samples, load_split  # noqa: E402
from damo_lit.data.datamodule import DaMODataModule, SpanPrior  # noqa: E402
from damo_lit.data.dataset import Collator, sample_item  # noqa: E402
from damo_lit.data.decode import DecodedVideo, DecodeError, DecodeParams, decode_video, worker_context  # noqa: E402
from damo_lit.data.features import (  # noqa: E402
    FEATURE_KEYS, CachedFeatures, FeatureCacheError, FeatureStore, read_json, write_json, config_signature,
    encoder_signature, ignore_interrupts, read_manifest, signature_diff, trainable_towers, video_key,
)  # fmt: skip
from damo_lit.data.schema import TASKS, Record  # noqa: E402
from damo_lit.data.sources.base import SPLITS  # noqa: E402

log = logging.getLogger(__name__)

FORMAT = "damo-stream-v1"
META = "damo_stream.json"
WRITTEN = "damo_written.json"  # per (split, task): written only after its optimize finished and was checked
TIME_KEYS = ("frame_times", "frame_mask", "audio_times", "audio_mask")
# The litdata serializers StreamItem's values get (str, bytes, int, float, tensors of rank != 1;
# rank-1 tensors are "no_header_tensor:<dtype index>"). litdata picks each field's deserializer
# from index.json's data_format, "pickle" and "graph" (which unpickles) included, so a stream
# naming anything else is refused before litdata reads it.
SAFE_FORMATS = ("str", "bytes", "int", "float", "tensor", "no_header_tensor:<dtype index>")
_SAFE_FORMAT = re.compile(r"(str|bytes|int|float|tensor|no_header_tensor:\d+)")
# litdata's size units (decimal, as its own parser takes them)
BYTE_UNITS = {"tb": 1000**4, "gb": 1000**3, "mb": 1000**2, "kb": 1000, "t": 1000**4, "g": 1000**3, "m": 1000**2,
              "k": 1000, "b": 1}  # fmt: skip
_SIZE = re.compile(r"(\d+(?:\.\d*)?)\s*(" + "|".join(BYTE_UNITS) + r")?")


def chunk_bytes_count(value: Any) -> int:
    """A chunk size (`64MB`, `512KB`, `1.5GB`, a number of bytes) as bytes, checked before any
    worker starts; ValueError saying what is expected otherwise."""
    match = None if isinstance(value, bool) else _SIZE.fullmatch(str(value).strip().lower())
    count = int(float(match.group(1)) * BYTE_UNITS[match.group(2) or "b"]) if match else 0
    if count < 1:
        raise ValueError("expected a size of at least 1 byte such as 64MB, 512KB, 1.5GB or a number of bytes")
    return count


class UnsafeStreamError(ValueError):
    """A stream whose index.json asks litdata for a deserializer this project's writer never uses
    (pickle among them): opening it could unpickle anything, so it is refused unopened."""


def read_index(folder: Path) -> dict[str, Any]:
    """`folder/index.json` once every field's data_format is one write_stream produces.

    Raises UnsafeStreamError naming the file, the field and its format otherwise (or when the
    file is not the chunk index write_stream writes: litdata reads other layouts' formats too).
    """
    path = folder / "index.json"
    if not path.is_file():
        raise FeatureCacheError(f"{path}: not there; the stream is incomplete: write it with `damo-cache kind=stream`")
    index = read_json(path)
    index = index if isinstance(index, dict) else {}
    config = index.get("config") if isinstance(index.get("config"), dict) else {}
    formats = config.get("data_format")
    if not isinstance(index.get("chunks"), list) or not isinstance(formats, list):
        raise UnsafeStreamError(
            f"{path}: refused to open it: not the litdata chunk index `damo-cache kind=stream` writes "
            f"(expected the lists 'chunks' and 'config.data_format')"
        )
    for name, fmt in zip(_field_names(config, len(formats)), formats):
        if not isinstance(fmt, str) or not _SAFE_FORMAT.fullmatch(fmt):
            raise UnsafeStreamError(
                f"{path}: refused to open it: field {name!r} has data_format {fmt!r}; `damo-cache kind=stream` "
                f"writes only {', '.join(SAFE_FORMATS)} (litdata takes each field's deserializer from it, and some "
                f"unpickle)"
            )
    return index


def _field_names(config: Mapping[str, Any], count: int) -> list[str]:
    """The item keys of index.json's data_spec (a flat dict for StreamItem's items), else #i."""
    try:
        spec = json.loads(config["data_spec"])[1]
        names = json.loads(spec["context"])
        if isinstance(names, list) and len(names) == count:
            return [str(name) for name in names]
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return [f"#{i}" for i in range(count)]


def check_index(folder: Path, samples: int) -> dict[str, Any]:
    """`read_index(folder)` once its chunk files exist at their indexed sizes and hold `samples`
    samples in all; FeatureCacheError naming the folder and what differs otherwise (a write that
    crashed can leave an index with no chunks, and litdata then fails with "No chunks found")."""
    index = read_index(folder)
    total = 0
    for chunk in index["chunks"]:
        chunk = chunk if isinstance(chunk, dict) else {}
        chunk_file = folder / str(chunk.get("filename"))
        if not chunk_file.is_file():
            raise FeatureCacheError(f"{folder}/index.json: lists chunk {chunk_file.name}, which is not there")
        if chunk_file.stat().st_size != chunk.get("chunk_bytes"):
            raise FeatureCacheError(f"{chunk_file}: {chunk_file.stat().st_size} bytes, index.json says "
                                    f"{chunk.get('chunk_bytes')}")  # fmt: skip
        total += int(chunk.get("chunk_size") or 0)
    if total != samples:
        raise FeatureCacheError(f"{folder}/index.json: {total} samples in {len(index['chunks'])} chunks, "
                                f"expected {samples}")  # fmt: skip
    return index


def decode_bytes(data: bytes | memoryview, params: DecodeParams, name: str = "video.mp4") -> DecodedVideo:
    """Decode an MP4 held in memory exactly as a file (`decode_video`), via a memory-backed
    temporary file; DecodeError names `name`."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".mp4", dir=folder) as handle:
        handle.write(data)
        handle.flush()
        try:
            return decode_video(handle.name, params)
        except DecodeError as err:
            raise DecodeError(name, err.reason) from None


def record_json(record: Record) -> str:
    """The record as JSON text, times at full precision (Record.to_dict rounds to milliseconds)."""
    obj = record.to_dict()
    obj["duration"] = record.duration
    obj["spans"] = [[s, e] for s, e in record.spans]
    return json.dumps(obj)


class StreamItem:
    """litdata.optimize's function: (record JSON, video path, cache key) -> one stored item."""

    def __init__(self, features: str | None = None) -> None:
        self.features = features
        self._store: FeatureStore | None = None

    def __call__(self, entry: tuple[str, str, str]) -> dict[str, Any]:
        _leave_interrupts_to_parent()
        record, path, key = entry
        item: dict[str, Any] = {"record": record, "key": key}
        if self.features is None:
            item["mp4"] = Path(path).read_bytes()
            return item
        if self._store is None:
            self._store = FeatureStore(self.features)
        row = self._store.load(key)
        for name in (*FEATURE_KEYS, *TIME_KEYS):
            value = getattr(row, name)
            if value is not None:
                item[name] = value
        item["has_audio"] = int(row.has_audio)
        item["video_duration"] = float(row.duration)
        return item


def _leave_interrupts_to_parent() -> None:
    """In a litdata writer process (where StreamItem runs), Ctrl-C is the parent's: it stops the
    workers and says so in one line, where each worker would print its own traceback."""
    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        ignore_interrupts()


@dataclass
class StreamReport:
    """What write_stream wrote: samples per split and task, and what it left out and why."""

    out: str
    kind: str
    samples: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # video path -> reason
    # split/task datasets found complete: of this run's, and those of other splits / tasks an earlier
    # write left there (kept in damo_stream.json, and counted in `samples`)
    reused: list[str] = field(default_factory=list)
    rewritten: dict[str, str] = field(default_factory=dict)  # split/task -> why what was there was not kept


def write_stream(
    datamodule: DaMODataModule,
    out: str | Path,
    splits: Sequence[str] = SPLITS,
    tasks: Sequence[str] = TASKS,
    chunk_bytes: int | str = "64MB",
    num_workers: int = 1,
) -> StreamReport:
    """Write litdata datasets of the data config's samples, one per (split, task), into `out`.

    With `datamodule.features` set, items carry the cached tower outputs instead of MP4 bytes.
    A (split, task) dataset already complete is kept: a rerun after an interruption writes only
    the rest. Complete means checked: its damo_written.json and its index.json both count the
    samples this run would write, and the indexed chunks are there; anything else is written again.
    Complete datasets of other splits or tasks, written earlier into `out`, stay listed in its
    damo_stream.json (a rerun with fewer tasks does not hide them).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "features" if datamodule.features else "video"
    store = FeatureStore(datamodule.features, None, datamodule.params) if datamodule.features else None
    meta_path = out / META
    old = read_json(meta_path) if meta_path.is_file() else None
    if old is not None:
        if old.get("kind") != kind or old.get("data") != datamodule.name:
            raise FeatureCacheError(
                f"{out} holds a {old.get('kind')} stream of data {old.get('data')}; this run writes a {kind} "
                f"stream of {datamodule.name}: write to another folder"
            )
    report = StreamReport(out=str(out), kind=kind)
    worker_context()  # litdata's worker processes start from the warm fork server (never fork after torch)
    start_method = multiprocessing.get_start_method(allow_none=True)
    try:
        with private_optimizer_folders():
            _write_datasets(datamodule, out, splits, tasks, store, report, chunk_bytes_count(chunk_bytes), num_workers)
    finally:  # litdata sets the process-wide start method: give the caller back its own
        multiprocessing.set_start_method(start_method, force=True)
    if old is not None:
        _keep_earlier(old, out, {(s, t) for s in splits for t in tasks}, store, report)
    meta = {
        "format": FORMAT, "kind": kind, "data": datamodule.name, "samples": report.samples,
        "decode": json.loads(json.dumps(asdict(datamodule.params))),
        "features_manifest": store.manifest if store is not None else None,
        "features_files": store.files_digest() if store is not None else None,
        "span_prior": _span_prior(datamodule),
    }  # fmt: skip
    write_json(meta_path, meta)
    return report


def _keep_earlier(old: Mapping[str, Any], out: Path, written: set[tuple[str, str]], store: FeatureStore | None,
                  report: StreamReport) -> None:
    """Add to the report (so to damo_stream.json) the datasets an earlier write listed whose
    (split, task) this run did not write, when they are still complete and, for a features stream,
    made from the same feature cache; one warning for each left out."""
    # the same cache, and no row re-encoded since (a changed video's new row leaves the manifest as it was)
    same_cache = store is None or (old.get("features_manifest") == json.loads(json.dumps(store.manifest, default=str))
                                   and old.get("features_files", store.files_digest()) == store.files_digest())
    for split, counts in (old.get("samples") or {}).items():
        for task, samples in counts.items():
            if (split, task) in written:
                continue
            target = out / split / task
            reason = (_incomplete(target, int(samples)) if same_cache else
                      "written from another feature cache, or from one with videos re-encoded since")  # fmt: skip
            if reason is None:
                report.samples.setdefault(split, {})[task] = int(samples)
                report.reused.append(f"{split}/{task}")
            else:
                warnings.warn(f"{target}: an earlier write's sub-stream, left out of {META} ({reason})",
                              RuntimeWarning, stacklevel=3)  # fmt: skip
    report.samples = {split: dict(sorted(report.samples[split].items(), key=lambda kv: _order(TASKS, kv[0])))
                      for split in sorted(report.samples, key=lambda name: _order(SPLITS, name))}  # fmt: skip


def _order(names: Sequence[str], name: str) -> tuple[int, str]:
    return (names.index(name) if name in names else len(names), name)


# litdata's optimize first deletes its work folders ($TMPDIR/chunks and $TMPDIR/data unless these
# variables name others) and merges the workers' indexes there: two writes on one machine at once
# (two users, two jobs, a test beside a run) would delete each other's files.
OPTIMIZER_FOLDERS = {"DATA_OPTIMIZER_CACHE_FOLDER": "chunks", "DATA_OPTIMIZER_DATA_CACHE_FOLDER": "data"}


@contextlib.contextmanager
def private_optimizer_folders() -> Iterator[None]:
    """Point litdata's optimize at work folders of this write's own (removed afterwards), unless
    the user named them in the environment. The calling process cleans and merges there; the
    workers would use them only for remote inputs (this writer's are local files)."""
    unset = [name for name in OPTIMIZER_FOLDERS if name not in os.environ]
    if not unset:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="damo-litdata-") as work:
        os.environ.update({name: str(Path(work) / OPTIMIZER_FOLDERS[name]) for name in unset})
        try:
            yield
        finally:
            for name in unset:
                os.environ.pop(name, None)


def _write_datasets(datamodule: DaMODataModule, out: Path, splits: Sequence[str], tasks: Sequence[str],
                    store: FeatureStore | None, report: StreamReport, chunk_bytes: int, num_workers: int) -> None:
    """One litdata dataset per (split, task) with samples; complete ones are kept, others rewritten."""
    from litdata import optimize

    for split in splits:
        for task in tasks:
            try:
                loaded = load_split(datamodule.specs, split, (task,), weighted=split == "train", seed=datamodule.seed)
            except FileNotFoundError:
                break  # a split this source does not have
            if datamodule.max_samples_per_split:  # each source of a mixture in its share, as training caps
                loaded = cap_samples(loaded, datamodule.max_samples_per_split)
            samples = loaded.samples
            entries = _entries(samples, store, report)
            if not entries:
                continue
            if store is not None:  # rows of other videos than these must not be streamed as theirs
                store.check_unchanged({path: key for _, path, key in entries})
            report.samples.setdefault(split, {})[task] = len(entries)
            target, name = out / split / task, f"{split}/{task}"
            digest = content_digest(entries, store)
            reason = _incomplete(target, len(entries), digest)
            if reason is None:
                report.reused.append(name)
                continue
            if target.is_dir() and any(target.iterdir()):
                report.rewritten[name] = reason
                warnings.warn(f"{target}: not kept as complete ({reason}); writing it again", RuntimeWarning,
                              stacklevel=3)  # fmt: skip
            (target / WRITTEN).unlink(missing_ok=True)
            log.info("writing %s: %d samples into %s", name, len(entries), target)
            with litdata_chatter_held(), interrupts_raise():
                optimize(
                    fn=StreamItem(datamodule.features), inputs=entries, output_dir=str(target),
                    chunk_bytes=chunk_bytes, num_workers=max(1, int(num_workers)), reorder_files=False, verbose=True,
                    start_method="forkserver", mode="overwrite",
                )  # fmt: skip
            try:
                check_index(target, len(entries))
            except (FeatureCacheError, UnsafeStreamError) as err:
                raise FeatureCacheError(f"sub-stream {name}: litdata's optimize reported success, but {err}") from None
            write_json(target / WRITTEN, {"format": FORMAT, "samples": len(entries), "content": digest})


@contextlib.contextmanager
def litdata_chatter_held() -> Iterator[None]:
    """Let optimize show its progress bar (stderr) but hold back the dozen lines it prints per
    write (set-up, workers starting and ending, an advertisement); shown on stderr if it fails."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            yield
    except KeyboardInterrupt:
        raise  # Ctrl-C: the command's one line says what stays
    except BaseException:
        sys.stderr.write(said.getvalue())
        raise


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """Ctrl-C during litdata's optimize raises KeyboardInterrupt here, its processes stopped.

    DataProcessor.run installs a SIGINT handler that stops its workers and calls os._exit(0): the
    command would end with status 0, say nothing and skip every cleanup (its work folders stay in
    $TMPDIR). That handler is swapped for one that stops them as litdata does when a worker fails,
    then raises; and the caller's own handler is put back afterwards (litdata leaves its in place,
    so a Ctrl-C after the write would still end the process with status 0)."""
    from litdata.processing.data_processor import DataProcessor

    previous = signal.getsignal(signal.SIGINT)
    original = DataProcessor.__dict__.get("_signal_handler")
    before = frozenset(multiprocessing.active_children())
    DataProcessor._signal_handler = functools.partialmethod(_stop_and_interrupt, before)  # type: ignore[method-assign]
    try:
        yield
    finally:
        if original is not None:
            DataProcessor._signal_handler = original  # type: ignore[method-assign]
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


def _stop_and_interrupt(processor: Any, before: frozenset, signum: int, frame: Any) -> None:
    """DataProcessor's SIGINT handler while interrupts_raise holds: stop its processes, then raise.
    litdata's own stop (on a worker's error) terminates the workers it lists; one it was starting
    when the signal came is not listed yet, so every child process started since `before` goes too.
    A process half started cannot be stopped (nor listed): the signal is sent again a moment later."""
    if _in_process_start(frame):
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    stop = getattr(processor, "_exit_on_error", None)
    if stop is not None:
        with contextlib.suppress(RuntimeError):
            stop("interrupted (Ctrl-C)")
    started = [child for child in multiprocessing.active_children() if child not in before]
    for child in started:
        child.terminate()
    for child in started:
        child.join(timeout=5)
    sys.stderr.write("\n")  # litdata's progress bar stops mid-line: the command's message gets a line of its own
    raise KeyboardInterrupt


def _in_process_start(frame: Any) -> bool:
    """Whether `frame` is inside multiprocessing's Process.start (the child forked, not yet listed)."""
    where = os.path.join("multiprocessing", "process.py")
    while frame is not None:
        if frame.f_code.co_name == "start" and frame.f_code.co_filename.endswith(where):
            return True
        frame = frame.f_back
    return False


def content_digest(entries: Sequence[tuple[str, str, str]], store: FeatureStore | None) -> str:
    """What a sub-stream holds, as a SHA-256: its records and, per video, the feature cache's
    manifest and each row's file stamp (a features stream) or the file's size and modification time
    (MP4 bytes). A rerun keeps a sub-stream only when this is unchanged: the same number of samples
    from another cache, edited annotations or regenerated videos would otherwise be kept and served."""
    import hashlib

    digest = hashlib.sha256()
    if store is not None:
        digest.update(json.dumps(store.manifest, sort_keys=True, default=str).encode())
    for record, path, key in entries:
        if store is None:
            stat = Path(path).stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        elif store.stamp(key) is not None:  # the row's own video: a re-encoded one changes the digest
            digest.update(json.dumps(store.stamp(key), sort_keys=True).encode())
        digest.update(f"{key}\0{record}\0".encode())
    return digest.hexdigest()


def _incomplete(target: Path, samples: int, digest: str | None = None) -> str | None:
    """Why the dataset in `target` is not a finished write of `samples` samples (of content
    `digest`, when given); None when it is."""
    if not (target / WRITTEN).is_file():
        return f"no {WRITTEN}: its write did not finish (or predates {WRITTEN})"
    try:
        marker = read_json(target / WRITTEN)
        check_index(target, samples)
    except (FeatureCacheError, UnsafeStreamError) as err:
        return str(err)
    written = marker.get("samples") if isinstance(marker, dict) else None
    if written != samples:
        return f"{WRITTEN} counts {written} samples, this run writes {samples}"
    if digest is not None and marker.get("content") != digest:
        return (f"{WRITTEN} was written from other content (records, feature cache or video files)"
                if marker.get("content") else f"{WRITTEN} does not record its content (an older write)")
    return None


def _entries(samples: Sequence[Sample], store: FeatureStore | None, report: StreamReport) -> list[tuple[str, str, str]]:
    entries = []
    for sample in samples:
        key = video_key(sample)
        if store is not None:
            reason = store.bad.get(key) or (None if key in store else "not in the feature cache")
        else:
            reason = None if Path(sample.video_path).is_file() else "file not found"
        if reason is not None:
            report.skipped[sample.video_path] = reason
            continue
        entries.append((record_json(sample.record), sample.video_path, key))
    return entries


def _span_prior(datamodule: DaMODataModule) -> dict[str, Any] | None:
    try:
        return asdict(datamodule.train_span_prior())
    except (ValueError, FileNotFoundError):
        return None


class StreamingRecords:
    """Item -> sample for the Collator (a StreamingDataset transform): decode the MP4 bytes or
    take the cached rows, render and tokenise the record. None when the video fails to decode."""

    def __init__(self, params: DecodeParams, tokenizer: Any, timestamps: str, prompt_style: str,
                 failures: FailureLog) -> None:  # fmt: skip
        self.params = params
        self.tokenizer = tokenizer
        self.timestamps = timestamps
        self.prompt_style = prompt_style
        self.failures = failures

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any] | None:
        record = Record.from_dict(json.loads(item["record"]), where=f"stream item {item.get('key')}")
        if "mp4" in item:
            try:
                video: Any = decode_bytes(item["mp4"], self.params, item["key"])
            except DecodeError as err:
                self.failures.record(err.path, err.reason)
                return None
        else:
            video = CachedFeatures(
                **{name: item.get(name) for name in (*FEATURE_KEYS, *TIME_KEYS)},
                has_audio=bool(item["has_audio"]), duration=float(item["video_duration"]),
            )  # fmt: skip
        # The cache key (source label / video) names the video uniquely across a mixture's sources.
        return sample_item(record, video, self.tokenizer, self.timestamps, self.prompt_style,
                           video_key=item.get("key"))


def capped_counts(counts: Mapping[str, int], limit: int | None) -> dict[str, int]:
    """`counts` scaled down to `limit` in all (None: no limit), each keeping its share (largest
    remainders round up); those left with none are dropped."""
    total = sum(counts.values())
    if not limit or total <= limit:
        return dict(counts)
    shares = {name: count * limit / total for name, count in counts.items()}
    out = {name: int(share) for name, share in shares.items()}
    for name in sorted(shares, key=lambda n: out[n] - shares[n])[: limit - sum(out.values())]:
        out[name] += 1
    return {name: count for name, count in out.items() if count > 0}


def subsample_fraction(count: int, total: int) -> float:
    """litdata's `subsample` that keeps exactly `count` of `total` items (it keeps
    int(total * fraction); the half item guards against the fraction rounding below `count`)."""
    return 1.0 if count >= total else (count + 0.5) / total


@functools.cache
def resumable_loader_class() -> type:
    """litdata's StreamingDataLoader, whose restored epoch is replayed once (the class is made on
    first use: litdata is optional)."""
    from litdata import StreamingDataLoader

    class ResumableStreamingDataLoader(StreamingDataLoader):
        """litdata replays a loaded state in every epoch until one is iterated to its end, but Lightning
        stops after len(loader) batches without exhausting the iterator: every epoch after a resumed
        one would repeat its rest. Here the epoch after a resumed one starts afresh."""

        _resumed_ran = False

        def load_state_dict(self, obj: dict[str, Any]) -> None:
            super().load_state_dict(obj)
            self._resumed_ran = False
            # litdata takes len() of a CombinedStreamingDataset there, which sets its datasets' batch
            # size and workers to 1: unlike the saved state's, so they would resume on another order
            # (its "elastic" path) unless something calls len(loader) before iterating.
            self.dataset.set_batch_size(self.batch_size)
            self.dataset.set_num_workers(self.num_workers)

        def __iter__(self) -> Any:
            if self._resumed_ran:
                self.restore = self._resumed_ran = False
            resuming = self.restore
            for batch in super().__iter__():
                self._resumed_ran = resuming
                yield batch

    return ResumableStreamingDataLoader


class StreamingDataModule(DaMODataModule):
    """The datamodule over a folder written by `damo-cache kind=stream` (conf/data/streaming.yaml).

    Takes every key of DaMODataModule (tasks, prompts, decoding, batch size, workers) plus
    `streaming_dir`; annotations and videos are not needed on the training nodes.
    """

    def __init__(self, streaming_dir: str | None = None, format: str = "damo_jsonl", **kwargs: Any) -> None:
        if not streaming_dir:
            raise ValueError("data.streaming_dir is not set: the folder written by `damo-cache kind=stream`")
        super().__init__(format=format, **kwargs)
        self.streaming_dir = Path(streaming_dir)
        self.meta = read_manifest(self.streaming_dir / META, FORMAT, "data.streaming_dir",
                                  f"damo-cache kind=stream data=... out={self.streaming_dir}")  # fmt: skip
        if self.meta["kind"] == "features":
            self._check_features()
        for split, tasks in self.meta["samples"].items():  # refused here, before any rank starts training
            for task, samples in tasks.items():
                try:
                    check_index(self.streaming_dir / split / task, samples)
                except FeatureCacheError as err:
                    raise FeatureCacheError(f"data.streaming_dir={self.streaming_dir}: {err}; write it again with "
                                            f"`damo-cache kind=stream ... out={self.streaming_dir}`") from None
        self._train_loader: Any = None  # the StreamingDataLoader this fit trains on; its state goes in checkpoints
        self._loader_state: dict[str, Any] | None = None  # a restored checkpoint's, for the next training loader

    def feature_cache_signature(self) -> tuple[str, dict[str, Any]] | None:
        if self.meta["kind"] != "features":
            return None
        return f"data.streaming_dir={self.streaming_dir}", self.meta["features_manifest"]["signature"]

    def check_feature_cache(self) -> None:
        self._check_features()

    def _check_features(self) -> None:
        """A features stream serves only a model with the same frozen towers (as data.features)."""
        if self.features_model is None:
            return
        towers = trainable_towers(self.features_model)
        if towers:
            raise FeatureCacheError(
                f"data.streaming_dir={self.streaming_dir} holds cached tower outputs, so the towers must be frozen: "
                f"set {'=false '.join(towers)}=false"
            )
        made = self.meta["features_manifest"]["signature"]
        problems = signature_diff(config_signature(made),
                                  encoder_signature(self.features_model, made.get("pooled_local") is not None))
        if problems:
            raise FeatureCacheError(
                f"data.streaming_dir={self.streaming_dir} holds features of another model config: {'; '.join(problems)}"
            )

    def prepare_data(self) -> None:
        """Nothing to generate or decode: the stream was written beforehand."""

    def setup(self, stage: str | None = None) -> None:
        """Datasets are made per DataLoader (a StreamingDataset is an iterable with its own state)."""

    def teardown(self, stage: str | None = None) -> None:
        """A later fit builds its own training loader: this one's state is not where that run stands."""
        if stage in (None, "fit"):
            self._train_loader = None

    def train_dataloader(self) -> Any:
        """The training loader, continuing a restored checkpoint's epoch where it stopped.

        Lightning puts its own copy of the loader state only into a loader built after the checkpoint
        is restored; the stages build theirs earlier (configure_optimizers reads
        estimated_stepping_batches, litdata issue #775), so the datamodule's state carries it."""
        self._train_loader = self._dataloader("train", shuffle=True)
        self._restore_loader()
        return self._train_loader

    def _train_samples(self) -> int | None:
        """The samples of the stream's training tasks, once training streams them."""
        return sum(self._stream_counts("train").values()) if self._train_loader is not None else None

    def state_dict(self) -> dict[str, Any]:
        """The training position and the training StreamingDataLoader's state (plain containers)."""
        state = super().state_dict()
        loader = self._train_loader.state_dict() if self._train_loader is not None else self._loader_state
        if loader is not None:
            state["train_loader"] = loader
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restored before the fit loop starts: the training loader continues from the saved state. A
        loader built already (strategies that restore after setup, e.g. FSDP) is restored at once."""
        super().load_state_dict(state_dict)
        self._loader_state = state_dict.get("train_loader")
        if self._train_loader is not None:
            self._restore_loader()

    def _restore_loader(self) -> None:
        """Apply a restored loader state once; when the training data changed since (batch size,
        samples, ranks, seed, workers) its epoch starts again from the first batch, as the map-style
        data does (litdata would refuse a multi-task state, or re-stripe a single-task one)."""
        state, self._loader_state = self._loader_state, None
        if state is None:
            return
        if self._resume_changes(sum(self._stream_counts("train").values()), self._worker_changes(state)):
            # litdata's next __iter__ counts one epoch on from current_epoch: land on the saved one.
            self._train_loader.current_epoch = max(int(state["current_epoch"]) - 1, 0)
        else:
            self._train_loader.load_state_dict(state)

    def _worker_changes(self, state: Mapping[str, Any]) -> list[str]:
        """A litdata loader state is per worker process (0 workers count as 1)."""
        dataset = state.get("dataset") or {}
        first = dataset if "num_workers" in dataset else next(iter(dataset.values()), {})  # one task, or several
        saved, now = max(int(first.get("num_workers", 1)), 1), max(self.num_workers, 1)
        return [f"num_workers {saved} -> {now}"] if saved != now else []

    def _stream_counts(self, split: str) -> dict[str, int]:
        """Samples per task, of the split's tasks that the stream holds, at most
        data.max_samples_per_split in all (tasks keep their shares, as sources do in the map-style
        data's cap); a task whose share rounds to nothing is left out."""
        have = self.meta["samples"].get(split, {})
        counts = {task: int(have[task]) for task in self.tasks_for(split) if task in have}
        return capped_counts(counts, self.max_samples_per_split)

    def _datasets(self, split: str, shuffle: bool) -> Any:
        from litdata import CombinedStreamingDataset, StreamingDataset

        have = self.meta["samples"].get(split, {})
        counts = self._stream_counts(split)
        if not counts:
            raise ValueError(
                f"data.streaming_dir={self.streaming_dir} has no {split} samples of tasks {list(self.tasks_for(split))} "
                f"(it has {have or 'none'}); write them with `damo-cache kind=stream` and these tasks"
            )
        missing = sorted(set(self.tasks_for(split)) - set(have))  # not those a sample cap left out
        if missing:
            warnings.warn(f"{self.streaming_dir}: no {split} samples of task(s) {missing}", UserWarning, stacklevel=3)
        transform = StreamingRecords(self.params, self.tokenizer, self.timestamps, self.prompt_style,
                                     self.loader.failures)  # fmt: skip
        datasets = []
        for task, count in counts.items():
            folder = self.streaming_dir / split / task
            read_index(folder)  # litdata takes each field's deserializer from it: checked right before opening
            datasets.append(StreamingDataset(str(folder), shuffle=shuffle, seed=self.seed, transform=transform,
                                             subsample=subsample_fraction(count, int(have[task]))))  # fmt: skip
        if len(datasets) == 1:
            return datasets[0]
        return CombinedStreamingDataset(datasets, seed=self.seed, iterate_over_all=True)

    def _dataloader(self, split: str, shuffle: bool) -> Any:
        if self.tokenizer is None:
            raise RuntimeError("StreamingDataModule has no tokenizer: call set_tokenizer(tokenizer) first")
        workers = self.num_workers
        return resumable_loader_class()(
            self._datasets(split, shuffle),
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            num_workers=workers,
            collate_fn=Collator(self.tokenizer.pad_token_id),
            multiprocessing_context=worker_context() if workers > 0 else None,
            # Fresh workers each epoch: a persistent worker keeps its copy of the dataset, so the state
            # the loader resets between epochs (a CombinedStreamingDataset's samples yielded, restored on
            # resume) would shift its next epoch's mixing there.
            persistent_workers=False,
        )

    def train_span_prior(self) -> SpanPrior:
        """The constant-span baseline, computed from the training records when the stream was written."""
        prior = self.meta.get("span_prior")
        if not prior:
            raise ValueError(f"{self.streaming_dir}: the stream holds no training grounding records for a span prior")
        return SpanPrior(**prior)

