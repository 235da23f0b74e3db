"""Crash-safe, resumable output: OUT (DaMO JSONL) plus OUT.progress.jsonl beside it.

Each finished video is appended to OUT in one write (flushed and fsync'ed), then recorded in
the progress file with its statistics. On a rerun the progress file says which videos are
done: they are skipped, and OUT is repaired first (a torn last line, or records of a video
that crashed before it was marked done, are removed) so that it never holds half a line nor
a video twice. The progress file's first line fingerprints the settings, so that a rerun with
other settings does not silently mix two kinds of output.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from damo_lit.data.schema import Record
from damo_lit.differences import differences

PROGRESS_VERSION = 1


class OutputError(RuntimeError):
    """OUT cannot be written or resumed as asked; the message says what to do."""


def progress_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".progress.jsonl")


def summary_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".summary.json")


def _complete_lines(path: Path) -> tuple[list[str], bool]:
    """The lines of a file that end in a newline, and whether a torn last line was found."""
    if not path.exists():
        return [], False
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    torn = lines[-1] != ""
    return lines[:-1], torn


def _atomic_write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


@dataclass
class ResumableOutput:
    """Opens OUT for appending finished videos; `done` maps each finished video to its stats."""

    out: Path
    fingerprint: dict[str, Any]
    overwrite: bool = False
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    repaired: int = 0  # lines dropped from OUT while resuming

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.out.name:  # out=. (or /): a folder, named by its path so that the message can say so
            self.out = self.out.absolute()
            if not self.out.name:
                raise self._is_a_directory(self.out)
        self.fingerprint = json.loads(json.dumps(self.fingerprint))  # compare as it reads back (tuples -> lists)
        self.progress = progress_path(self.out)
        self._out_handle = None
        self._progress_handle = None

    def open(self) -> "ResumableOutput":
        """Start fresh, or resume: read the progress file and repair OUT to hold only finished videos."""
        self._check_paths()
        if self.overwrite:
            for path in (self.out, self.progress):
                path.unlink(missing_ok=True)
        if self.progress.exists():
            self._resume()
        elif self.out.exists() and self.out.stat().st_size > 0:
            raise OutputError(
                f"out={self.out} already exists and has no progress file {self.progress.name} beside it, so it "
                "cannot be resumed; pass overwrite=true to replace it, or choose another out="
            )
        else:
            _atomic_write_lines(self.progress, [json.dumps({"version": PROGRESS_VERSION, "fingerprint": self.fingerprint})])
            self.out.write_text("", encoding="utf-8")
        self._out_handle = self.out.open("a", encoding="utf-8")
        self._progress_handle = self.progress.open("a", encoding="utf-8")
        return self

    def _check_paths(self) -> None:
        """OUT and the files beside it must be files in a folder that can be made: a directory
        given as out= would otherwise be offered overwrite=true, and then fail with a traceback."""
        for path in (self.out, self.progress, summary_path(self.out)):
            if path.is_dir():
                raise self._is_a_directory(path)
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"out={self.out}: its folder cannot be made ({err.strerror}: {err.filename}); "
                              "expected a path in a writable folder") from None
        if not os.access(self.out.parent, os.W_OK | os.X_OK):
            raise OutputError(f"out={self.out}: the folder {self.out.parent} is not writable; choose another out=")

    def _is_a_directory(self, path: Path) -> OutputError:
        return OutputError(f"out={self.out}: {path} is a directory; expected the path of a JSONL file to write, "
                           f"e.g. out={self.out / 'augment.jsonl'}")

    def _resume(self) -> None:
        lines, torn = _complete_lines(self.progress)
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or header.get("version") != PROGRESS_VERSION:
            raise OutputError(f"{self.progress}: not a damo-augment progress file; pass overwrite=true to start over")
        diff = differences(header.get("fingerprint"), self.fingerprint)
        if diff:
            raise OutputError(
                f"{self.progress} was written with other settings: {'; '.join(diff)}. Resume with the same "
                "settings, pass overwrite=true to start over, or choose another out="
            )
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                self.done[entry["video"]] = entry
            except (json.JSONDecodeError, KeyError, TypeError):
                torn = True  # a damaged line: that video is simply done again
        if torn:
            _atomic_write_lines(self.progress, [lines[0]] + [json.dumps(e) for e in self.done.values()])
        out_lines, out_torn = _complete_lines(self.out)
        kept = []
        for line in out_lines:
            try:
                video = json.loads(line)["meta"]["source_video"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if video in self.done:
                kept.append(line)
        self.repaired = len(out_lines) - len(kept) + int(out_torn)
        if self.repaired:
            _atomic_write_lines(self.out, kept)

    def write_video(self, video: str, records: list[Record], stats: dict[str, Any]) -> None:
        """Append one finished video's records (one write, synced), then mark it done."""
        if self._out_handle is None or self._progress_handle is None:
            raise OutputError("ResumableOutput.write_video called before open()")
        if records:
            self._out_handle.write("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
            self._out_handle.flush()
            os.fsync(self._out_handle.fileno())
        entry = {"video": video, **stats}
        self._progress_handle.write(json.dumps(entry) + "\n")
        self._progress_handle.flush()
        os.fsync(self._progress_handle.fileno())
        self.done[video] = entry

    def close(self) -> None:
        for handle in (self._out_handle, self._progress_handle):
            if handle is not None:
                handle.close()
        self._out_handle = self._progress_handle = None
