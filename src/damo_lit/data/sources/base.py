"""What every annotation source shares: where its files are, and the counted fix-ups of real data.

A source reader turns its public format into `Draft`s: a record whose windows are still as the
file wrote them. `finalize` resolves the duration, fixes or drops each window per
`on_bad_window` (clip | drop), counts every fix-up by kind, and validates the result against
the DaMO schema. A malformed line or an unknown video is, per `on_bad_record`, collected into
one error that lists `file:line` and the reason of each (error), or a counted drop (drop).
Nothing is fixed silently.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from damo_lit.data.schema import BOM, Record, RecordError, decode_line, not_utf8

ON_BAD_WINDOW = ("clip", "drop")
ON_BAD_RECORD = ("error", "drop")
SPLITS = ("train", "val", "test")

# Every kind of fix-up, so that a report lists zeros too.
FIX_KINDS = (
    "window_end_clipped",  # a window ending after the video, clipped to its duration
    "window_start_clipped",  # a window starting before 0, clipped to 0
    "window_reversed_swapped",  # start > end, swapped
    "window_end_dropped",
    "window_start_dropped",
    "window_reversed_dropped",
    "window_empty_dropped",  # start == end (after any clipping): nothing left to fix
    "window_outside_dropped",  # starts at or after the end of the video
    "duration_probed",  # a missing duration, read from the video file
    "duration_missing_dropped",  # a missing duration and no video file to read it from
    "record_no_window_dropped",  # every window of a grounding record (or of a clip's caption) was dropped
    "record_malformed_dropped",  # a malformed line or entry (on_bad_record=drop)
    "record_unknown_video_dropped",  # a video with no known duration and no file (on_bad_record=drop)
)
EPSILON = 1e-6
MAX_LISTED_ERRORS = 50
MISSING = "???"  # OmegaConf's mandatory-value placeholder, as to_container leaves it in a plain dict


class BadRecordsError(RecordError):
    """Every bad record of a source (on_bad_record=error), each as `file:line: reason`; or, with
    `whole_file`, the one error that leaves no record of a file readable (not JSON at all, not
    UTF-8), which on_bad_record=drop cannot skip."""

    def __init__(self, errors: Sequence[RecordError], whole_file: bool = False) -> None:
        self.errors = list(errors)
        lines = [str(e) for e in self.errors[:MAX_LISTED_ERRORS]]
        if len(self.errors) > MAX_LISTED_ERRORS:
            lines.append(f"... and {len(self.errors) - MAX_LISTED_ERRORS} more")
        head = ("the whole file is unreadable (data.on_bad_record=drop skips bad records, not a file with none):"
                if whole_file else f"{len(self.errors)} bad record(s) (set data.on_bad_record=drop to count and skip them):")
        ValueError.__init__(self, head + "\n  " + "\n  ".join(lines))
        self.where = self.errors[0].where if self.errors else ""
        self.reason = head


@dataclass
class Fixes:
    """Counts of each fix-up kind (FIX_KINDS)."""

    counts: dict[str, int] = field(default_factory=lambda: {k: 0 for k in FIX_KINDS})

    def add(self, kind: str, n: int = 1) -> None:
        if kind not in self.counts:
            raise KeyError(f"unknown fix-up kind {kind!r}; known: {', '.join(FIX_KINDS)}")
        self.counts[kind] += n

    def merge(self, other: "Fixes") -> "Fixes":
        for kind, n in other.counts.items():
            self.add(kind, n)
        return self

    def total(self) -> int:
        return sum(self.counts.values())


def describe_fixes(counts: dict[str, int]) -> str:
    """The fix-ups that happened, as `kind=n, ...` (sorted), or '' when none did: one wording for
    the training log and damo-eval."""
    return ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items()) if n)


@dataclass(frozen=True)
class SourceSpec:
    """One annotation source, as a data config (or one entry of `data.sources`) describes it."""

    format: str
    annotations: str | None  # a file (every split) or, for damo_jsonl, a folder of {split}.jsonl
    video_dir: str | None = None  # record videos are relative to it (default: the annotation folder)
    durations: tuple[str, ...] = ()  # Charades_v1_*.csv files (charades_sta)
    splits: dict[str, str] = field(default_factory=dict)  # per-split files, over `annotations`
    video_ext: str = ".mp4"  # appended to video ids without a container suffix (formats.VIDEO_SUFFIXES)
    on_bad_window: str = "clip"
    on_bad_record: str = "error"
    weight: float = 1.0  # training mix: times each record appears per epoch (fraction: a subset fixed per run)
    name: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # caption_list: formats.COLUMNS keys -> column names
    key: str = "data"  # the config node it came from, for messages: data or data.sources[i]

    def __post_init__(self) -> None:
        if self.on_bad_window not in ON_BAD_WINDOW:
            raise ValueError(f"data.on_bad_window must be clip or drop, got {self.on_bad_window!r}")
        if self.on_bad_record not in ON_BAD_RECORD:
            raise ValueError(f"data.on_bad_record must be error or drop, got {self.on_bad_record!r}")
        if self.weight < 0:
            raise ValueError(f"a source weight must be >= 0, got {self.weight} (source {self.label})")
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"data.splits has unknown split(s) {sorted(unknown)}; expected {', '.join(SPLITS)}")

    @property
    def label(self) -> str:
        return self.name or self.format

    @property
    def id_prefix(self) -> str:
        """What starts the ids this source makes: '' alone, and in a mixture (data.sources) its name,
        else its place there (`sources[1]/`), since two sources may describe the same videos
        (ActivityNet's val_1 and val_2) and a repeated id breaks damo-score. Ids a file states
        (DaMO JSONL) are kept as written: they key the ground truth that damo-score reads."""
        if not self.key.startswith("data.sources["):
            return ""
        return f"{self.name or self.key.removeprefix('data.')}/"

    def annotation_file(self, split: str | None) -> Path:
        """The file that holds `split` (None: the single `annotations` file)."""
        if split is not None and self.splits.get(split):
            return resolve(self.splits[split])
        if not self.annotations or self.annotations == MISSING:
            also = f"; or set {self.key}.splits.{split}" if split is not None else ""
            raise ValueError(f"source {self.label}: {self.key}.annotations is required (a file path){also}")
        path = resolve(self.annotations)
        if path.is_dir():
            if split is None:
                raise ValueError(f"source {self.label}: {path} is a folder; name a split")
            return path / f"{split}.jsonl"
        return path

    def has_split_files(self) -> bool:
        """True when splits come from different files (a folder or data.splits), not one shared file."""
        given = bool(self.annotations) and self.annotations != MISSING
        return bool(self.splits) or (given and resolve(str(self.annotations)).is_dir())

    def video_root(self, annotation_file: Path) -> Path:
        if self.video_dir == MISSING:
            raise ValueError(f"source {self.label}: {self.key}.video_dir is required (a folder)")
        if self.video_dir:
            return resolve(self.video_dir)
        return annotation_file.parent


def resolve(path: str | os.PathLike[str]) -> Path:
    """A config path: `~` expanded, relative paths taken from the working directory."""
    return Path(os.path.expanduser(str(path))).absolute()


@dataclass
class Draft:
    """A record before fix-ups: windows as the source wrote them, texts built from the kept ones.

    `build(kept)` gets the indices (into `windows`) that survived, in order, and returns
    (turns, caption); placeholders in them number the kept windows 0, 1, ...
    """

    where: str
    id: str
    video: str
    duration: float | None
    task: str
    windows: list[tuple[float, float]]
    build: Callable[[list[int]], tuple[list[tuple[str, str]], str | None]]
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    known_video: bool = True  # False: the id is missing from the source's durations table
    needs_window: bool = False  # True: dropped when every window is (a clip's caption is wrong for the whole video)
    # False: its windows are another draft's too (ActivityNet's queries repeat their paragraph's), whose
    # fix-ups count them, so that each window of the file is counted once
    windows_counted: bool = True


@dataclass
class LoadResult:
    """The records of one source file, with every fix-up counted."""

    records: list[Record]
    fixes: Fixes
    files: list[Path]
    video_root: Path


def fix_window(
    start: float, end: float, duration: float, policy: str, fixes: Fixes
) -> tuple[float, float] | None:
    """One window made valid for a video of `duration` s, or None when it is dropped (counted)."""
    if start >= duration - EPSILON and end >= duration - EPSILON:
        fixes.add("window_outside_dropped")
        return None
    if start > end:
        if policy == "drop":
            fixes.add("window_reversed_dropped")
            return None
        fixes.add("window_reversed_swapped")
        start, end = end, start
    if start < 0:
        if policy == "drop":
            fixes.add("window_start_dropped")
            return None
        fixes.add("window_start_clipped")
        start = 0.0
    if end > duration + EPSILON:
        if policy == "drop":
            fixes.add("window_end_dropped")
            return None
        fixes.add("window_end_clipped")
        end = duration
    if end - start <= EPSILON:
        fixes.add("window_empty_dropped")
        return None
    return start, end


def finalize(draft: Draft, spec: SourceSpec, video_root: Path, fixes: Fixes) -> Record | None:
    """Resolve the duration, fix the windows and validate; None when dropped (counted).

    Raises RecordError for an unknown video or an invalid result (the caller applies
    on_bad_record).
    """
    duration = draft.duration
    if duration is None or duration <= 0:
        from damo_lit.data.decode import probe_duration

        video_path = video_root / draft.video
        probed = probe_duration(video_path) if spec.on_bad_window == "clip" and video_path.is_file() else None
        if probed:
            fixes.add("duration_probed")
            duration = probed
        elif not draft.known_video:
            raise RecordError(draft.where, f"unknown video {draft.video!r}: not in the durations file(s) and no file at {video_path}")
        else:
            fixes.add("duration_missing_dropped")
            return None
    kept: list[int] = []
    spans: list[tuple[float, float]] = []
    window_fixes = fixes if draft.windows_counted else Fixes()
    for i, (start, end) in enumerate(draft.windows):
        fixed = fix_window(start, end, duration, spec.on_bad_window, window_fixes)
        if fixed is not None:
            kept.append(i)
            spans.append(fixed)
    if (draft.task == "grounding" or draft.needs_window) and draft.windows and not kept:
        fixes.add("record_no_window_dropped")
        return None
    turns, caption = draft.build(kept)
    obj: dict[str, Any] = {
        "id": spec.id_prefix + draft.id,
        "video": draft.video,
        "duration": duration,
        "task": draft.task,
        "spans": [list(s) for s in spans],
        "turns": [{"role": r, "content": c} for r, c in turns],
        "meta": draft.meta,
    }
    if caption is not None:
        obj["caption"] = caption
    if draft.modality is not None:
        obj["modality"] = draft.modality
    return Record.from_dict(obj, draft.where)


def collect(
    items: Iterable[Draft | Record | RecordError], spec: SourceSpec, video_root: Path, fixes: Fixes
) -> list[Record]:
    """Finalize drafts (Records pass as they are); apply on_bad_record to malformed lines and unknown videos."""
    records: list[Record] = []
    errors: list[RecordError] = []
    for item in items:
        try:
            if isinstance(item, RecordError):
                raise item
            record = item if isinstance(item, Record) else finalize(item, spec, video_root, fixes)
        except RecordError as err:
            if spec.on_bad_record == "error":
                errors.append(err)
            else:
                fixes.add("record_unknown_video_dropped" if "unknown video" in err.reason else "record_malformed_dropped")
            continue
        if record is not None:
            records.append(record)
    if errors:
        raise BadRecordsError(errors)
    return records


def sentence_question(sentence: str) -> str:
    """A grounding question from a description: 'when does this happen: person opens a door?'"""
    return f"when does this happen: {sentence.strip().rstrip('.!? ').strip()}?"


def spans_answer(count: int) -> str:
    """'{span:0}.' / '{span:0} and {span:1}.' / '{span:0}, {span:1} and {span:2}.'"""
    parts = [f"{{span:{i}}}" for i in range(count)]
    if count <= 1:
        return (parts[0] if parts else "") + "."
    return ", ".join(parts[:-1]) + " and " + parts[-1] + "."


def grounding_build(sentence: str) -> Callable[[list[int]], tuple[list[tuple[str, str]], str | None]]:
    """`Draft.build` for a one-query grounding record: question from the sentence, answer all kept spans."""

    def build(kept: list[int]) -> tuple[list[tuple[str, str]], str | None]:
        return [("user", sentence_question(sentence)), ("assistant", spans_answer(len(kept)))], None

    return build


# Text files. Excel and PowerShell start UTF-8 text with a byte-order mark, which is no part of
# the first line; a line that is not UTF-8 (a file saved as Latin-1) is one bad record, named
# `file:line` (schema.decode_line, as in DaMO JSONL), never the end of the whole load.


def text_lines(path: Path) -> Iterator[tuple[int, str, str | RecordError]]:
    """(line number, 'file:line', stripped text or RecordError) for each non-blank line of a text file."""
    with path.open("rb") as handle:  # bytes: decoded line by line (decode_line)
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            text = decode_line(raw, where, lineno == 1)
            if isinstance(text, RecordError):
                yield lineno, where, text
            elif text.strip():
                yield lineno, where, text.strip()


def read_text(path: Path) -> str:
    """A whole text file (a byte-order mark left out); RecordError naming `file:line` and the byte
    when it is not UTF-8 (a file read whole has no other line to go on with)."""
    data = path.read_bytes()
    start = len(BOM) if data.startswith(BOM) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        line, reason = not_utf8(data, start + err.start)
        raise RecordError(f"{path}:{line}", reason) from None


def _csv_lines(handle: Iterable[bytes], path: Path, bad: dict[int, RecordError]) -> Iterator[str]:
    """The lines of a CSV file as text for csv.reader; each that is not UTF-8 noted in `bad` (and
    given with its bad bytes replaced, so that csv still finds the fields of the rest)."""
    for lineno, raw in enumerate(handle, start=1):
        text = decode_line(raw, f"{path}:{lineno}", lineno == 1)
        if isinstance(text, RecordError):
            bad[lineno] = text
            text = raw.removeprefix(BOM).decode("utf-8", errors="replace")
        yield text


def csv_rows(
    path: Path, delimiter: str = ",", required: Sequence[str] = (), what: str = "CSV"
) -> Iterator[tuple[str, dict[str, str]] | RecordError]:
    """('file:line', row) for each row of a CSV file with a header, or the RecordError of a row on
    a line that is not UTF-8. A header that is not UTF-8, or lacks a `required` column, raises
    RecordError: no row can be read."""
    bad: dict[int, RecordError] = {}
    with path.open("rb") as handle:
        reader = csv.DictReader(_csv_lines(handle, path, bad), delimiter=delimiter)
        header = reader.fieldnames or []
        if bad:
            raise bad[min(bad)]
        missing = sorted(set(required) - set(header))
        if missing:
            names = " and ".join(repr(c) for c in required)
            raise RecordError(f"{path}:1", f"expected a {what} header with {names}, missing {missing}")
        done = reader.line_num
        for row in reader:
            broken = [bad[n] for n in range(done + 1, reader.line_num + 1) if n in bad]
            done = reader.line_num
            yield broken[0] if broken else (f"{path}:{reader.line_num}", row)
