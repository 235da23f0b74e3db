"""Decode once, reuse: a folder of decoded videos, and a log of files that failed to decode.

Decoding costs about 0.1 s a video (mostly audio) while a step of the tiny model is cheaper,
and the demo trains four stages on the same videos. `DecodedCache` keeps one `.npz` per video,
keyed by a hash of (absolute path, size, mtime, decode parameters), so that a changed file or
changed parameters miss the cache. It is read back with plain numpy (`allow_pickle=False`).
A file that fails is recorded as bad (`.bad.json`, with the reason), so that it is not retried
every epoch, and still reported. `prepare` fills the cache with a process pool ('forkserver',
never fork) and a progress bar.

`FailureLog` counts decode failures across DataLoader worker processes: each process appends
to its own small file in a shared folder, and the main process reads them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from damo_lit.data.decode import DecodedVideo, DecodeError, DecodeParams, decode_video, worker_context


@dataclass(frozen=True)
class BadFile:
    """A file that failed to decode, and why."""

    path: str
    reason: str


class DecodedCache:
    """One .npz per (file, size, mtime, decode parameters) under `root`; None root: no caching."""

    def __init__(self, root: str | Path | None, params: DecodeParams) -> None:
        self.root = Path(root) if root else None
        self.params = params

    def _stem(self, path: Path) -> Path | None:
        if self.root is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            return None  # a missing file is never cached: it may appear later
        text = f"{path.absolute()}|{stat.st_size}|{stat.st_mtime_ns}|{self.params.fingerprint()}"
        key = hashlib.sha1(text.encode()).hexdigest()
        return self.root / key[:2] / key

    def known_bad(self, path: str | Path) -> str | None:
        """Why `path` cannot be decoded, when that is known without decoding (missing, or recorded bad)."""
        path = Path(path)
        if not path.is_file():
            return "file not found"
        stem = self._stem(path)
        bad = stem.with_suffix(".bad.json") if stem is not None else None
        if bad is not None and bad.is_file():
            return str(json.loads(bad.read_text())["reason"])
        return None

    def lookup(self, path: str | Path) -> DecodedVideo | BadFile | None:
        """The cached decode, the recorded failure, or None (not cached)."""
        stem = self._stem(Path(path))
        if stem is None:
            return None
        bad = stem.with_suffix(".bad.json")
        if bad.is_file():
            return BadFile(str(path), json.loads(bad.read_text())["reason"])
        npz = stem.with_suffix(".npz")
        if npz.is_file():
            try:
                with np.load(npz, allow_pickle=False) as arrays:
                    return DecodedVideo.from_arrays({k: arrays[k] for k in arrays.files})
            except (OSError, ValueError, KeyError, EOFError) as err:  # a torn cache file: decode again
                warnings.warn(f"decoded cache entry {npz} is unreadable ({err}); decoding {path} again", stacklevel=2)
        return None

    def _write(self, target: Path, write) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        write(tmp)
        os.replace(tmp, target)  # atomic: concurrent readers see all of it or nothing

    def store(self, path: str | Path, decoded: DecodedVideo) -> None:
        stem = self._stem(Path(path))
        if stem is not None:
            arrays = decoded.to_arrays()

            def write(tmp: Path) -> None:
                with tmp.open("wb") as handle:
                    np.savez_compressed(handle, **arrays)

            self._write(stem.with_suffix(".npz"), write)

    def store_bad(self, path: str | Path, reason: str) -> None:
        stem = self._stem(Path(path))
        if stem is not None:
            payload = json.dumps({"path": str(path), "reason": reason})
            self._write(stem.with_suffix(".bad.json"), lambda tmp: tmp.write_text(payload))

    def load(self, path: str | Path) -> DecodedVideo:
        """Decode through the cache; DecodeError (also for a failure recorded earlier)."""
        cached = self.lookup(path)
        if isinstance(cached, BadFile):
            raise DecodeError(path, cached.reason)
        if cached is not None:
            return cached
        try:
            decoded = decode_video(path, self.params)
        except DecodeError as err:
            if Path(path).is_file():
                self.store_bad(path, err.reason)
            raise
        self.store(path, decoded)
        return decoded


class FailureLog:
    """Decode failures, shared by every process through small per-process files in `folder`."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)  # made by the first failure
        self._warned: set[str] = set()

    def record(self, path: str, reason: str) -> None:
        """Count one skipped sample, and warn (once per file and process) naming the file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"{os.getpid()}.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"path": path, "reason": reason}) + "\n")
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"skipping {path}: {reason}", RuntimeWarning, stacklevel=2)

    def entries(self) -> list[BadFile]:
        out: list[BadFile] = []
        for log in sorted(self.folder.glob("*.jsonl")):
            for line in log.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    obj = json.loads(line)
                    out.append(BadFile(obj["path"], obj["reason"]))
        return out

    def files(self) -> dict[str, list[str]]:
        """Each failed file, with the reason of every sample skipped because of it."""
        out: dict[str, list[str]] = {}
        for entry in self.entries():
            out.setdefault(entry.path, []).append(entry.reason)
        return out

    def skipped(self) -> int:
        """Samples skipped so far (a file used by several records counts once per record)."""
        return len(self.entries())


@dataclass
class PrepareReport:
    decoded: int = 0
    cached: int = 0
    bad: dict[str, str] = field(default_factory=dict)


def _prepare_one(path: str, root: str, params: DecodeParams) -> tuple[str, str, str]:
    """Worker: decode one file into the cache. Returns (path, 'decoded' | 'cached' | 'bad', reason)."""
    cache = DecodedCache(root, params)
    cached = cache.lookup(path)
    if isinstance(cached, BadFile):
        return path, "bad", cached.reason
    if cached is not None:
        return path, "cached", ""
    try:
        cache.load(path)
    except DecodeError as err:
        return path, "bad", err.reason
    return path, "decoded", ""


def prepare(
    paths: Iterable[str | Path], root: str | Path, params: DecodeParams, workers: int = 2
) -> PrepareReport:
    """Decode every file not yet in the cache at `root` (process pool, progress bar)."""
    from rich.console import Console
    from rich.progress import Progress

    unique = sorted({str(Path(p)) for p in paths})
    report = PrepareReport()
    todo: list[str] = []
    cache = DecodedCache(root, params)
    for path in unique:
        if not Path(path).is_file():  # reported, not cached: the file may appear later
            report.bad[path] = "file not found"
            continue
        cached = cache.lookup(path)
        if isinstance(cached, BadFile):
            report.bad[path] = cached.reason
        elif cached is not None:
            report.cached += 1
        else:
            todo.append(path)
    if not todo:
        return report
    workers = max(1, min(workers, len(todo)))
    with Progress(console=Console(stderr=True), transient=False) as progress:  # stdout may carry a command's JSON
        task = progress.add_task(f"decoding {len(todo)} videos into {root}", total=len(todo))
        if workers == 1:
            results: Iterable[tuple[str, str, str]] = (_prepare_one(p, str(root), params) for p in todo)
            for result in results:
                _tally(report, result)
                progress.advance(task)
        else:
            context = worker_context()
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                chunk = max(1, min(8, len(todo) // (workers * 4)))
                n = len(todo)
                for result in pool.map(_prepare_one, todo, [str(root)] * n, [params] * n, chunksize=chunk):
                    _tally(report, result)
                    progress.advance(task)
    return report


def _tally(report: PrepareReport, result: tuple[str, str, str]) -> None:
    path, status, reason = result
    if status == "bad":
        report.bad[path] = reason
    elif status == "cached":
        report.cached += 1
    else:
        report.decoded += 1


def warn_bad(bad: dict[str, str], limit: int = 20) -> None:
    """One warning naming the bad files (the first `limit`) and their reasons."""
    if not bad:
        return
    names: Sequence[str] = [f"{p}: {r}" for p, r in sorted(bad.items())[:limit]]
    more = f"\n  ... and {len(bad) - limit} more" if len(bad) > limit else ""
    warnings.warn(
        f"{len(bad)} video file(s) cannot be decoded and will be skipped:\n  " + "\n  ".join(names) + more,
        RuntimeWarning,
        stacklevel=2,
    )
