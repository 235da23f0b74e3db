"""Raw paragraph-level readers: each video's events exactly as the public release states them.

These readers do not fix anything: a window that ends after the video, a reversed or empty
window, or a missing duration comes back as written. Fixing (clip or drop, counted) is the
job of the record sources built on top of them (`damo_lit.data.sources`), and the
augmentation tool reads the same raw events to generate temporally grounded QA.

A malformed line or entry raises `RecordError` naming `file:line` (or `file:VIDEO` for JSON
files) and the reason. The `iter_*` generators yield such errors instead of raising, so that
a caller can count and drop them. Files are UTF-8, a byte-order mark at the start ignored; a
line that is not UTF-8 is such an error (base.text_lines, base.csv_rows), and so is a JSON
file that is not (a whole-file error, naming its line and byte).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from damo_lit.data.schema import RecordError
from damo_lit.data.sources.base import csv_rows, read_text, text_lines

Event = tuple[float, float, str]


@dataclass(frozen=True)
class VideoEvents:
    """Paragraph-level annotation of one video, as in the source (events unfixed)."""

    video: str  # video id, as the source names it
    duration: float | None
    events: tuple[Event, ...]  # (start, end, sentence)


@dataclass(frozen=True)
class CharadesLine:
    """One parsed line of a Charades-STA file: `VID start end##sentence`."""

    lineno: int
    video: str
    start: float
    end: float
    sentence: str


def _number(text: Any) -> float:
    """float(text), refusing NaN and infinities, which no annotation means."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not finite")
    return value


def iter_charades_sta(path: str | Path) -> Iterator[CharadesLine | RecordError]:
    """Parse a Charades-STA file line by line; yield a CharadesLine or a RecordError per line."""
    for lineno, where, line in text_lines(Path(path)):
        yield line if isinstance(line, RecordError) else _charades_line(lineno, where, line)


def _charades_line(lineno: int, where: str, line: str) -> CharadesLine | RecordError:
    head, sep, sentence = line.partition("##")
    parts = head.split()
    if not sep or len(parts) != 3:
        return RecordError(where, f"expected 'VID start end##sentence', got {line[:80]!r}")
    try:
        start, end = _number(parts[1]), _number(parts[2])
    except ValueError:
        return RecordError(where, f"start and end must be numbers, got {parts[1]!r} and {parts[2]!r}")
    sentence = sentence.strip()
    if not sentence:
        return RecordError(where, "the sentence after '##' is empty")
    return CharadesLine(lineno, parts[0], start, end, sentence)


def group_by_video(lines: list[CharadesLine], durations: dict[str, float] | None) -> list[VideoEvents]:
    """Gather Charades-STA lines into one VideoEvents per video, in order of first appearance."""
    grouped: dict[str, list[Event]] = {}
    for item in lines:
        grouped.setdefault(item.video, []).append((item.start, item.end, item.sentence))
    durations = durations or {}
    return [VideoEvents(vid, durations.get(vid), tuple(events)) for vid, events in grouped.items()]


def read_charades_sta(path: str | Path, durations: dict[str, float] | None = None) -> list[VideoEvents]:
    """Read `VID start end##sentence` lines, grouped per video; duration from `durations` or None.

    Raises RecordError (naming file:line) on the first malformed line.
    """
    lines: list[CharadesLine] = []
    for item in iter_charades_sta(path):
        if isinstance(item, RecordError):
            raise item
        lines.append(item)
    return group_by_video(lines, durations)


def iter_charades_durations(csv_path: str | Path) -> Iterator[tuple[str, float | None] | RecordError]:
    """(video id, duration in seconds) per row of Charades_v1_{train,test}.csv (its `length`
    column), or the RecordError of a row that is not UTF-8.

    A row whose length is empty, not a number or not above 0 gives (id, None): the video is
    known, its duration is not (the caller probes the file or drops its queries, counted), which
    is not the same as an id the file lacks. A file without `id` and `length` columns raises
    RecordError.
    """
    for item in csv_rows(Path(csv_path), required=("id", "length"), what="Charades CSV"):
        if isinstance(item, RecordError):
            yield item
            continue
        row = item[1]
        try:
            length: float | None = _number(row["length"])
        except (TypeError, ValueError):
            length = None
        yield row["id"], length if length is not None and length > 0 else None


def read_charades_durations(csv_path: str | Path) -> dict[str, float]:
    """Video id -> duration in seconds of the rows that give one (iter_charades_durations);
    raises the first RecordError."""
    out: dict[str, float] = {}
    for item in iter_charades_durations(csv_path):
        if isinstance(item, RecordError):
            raise item
        if item[1] is not None:
            out[item[0]] = item[1]
    return out


def parse_activitynet_entry(video: str, entry: Any, where: str) -> VideoEvents:
    """Validate one `{duration, timestamps, sentences}` entry of ActivityNet Captions."""
    if not isinstance(entry, dict):
        raise RecordError(where, f"expected an object with duration, timestamps, sentences, got {type(entry).__name__}")
    stamps, sentences = entry.get("timestamps"), entry.get("sentences")
    if not isinstance(stamps, list) or not isinstance(sentences, list):
        raise RecordError(where, "'timestamps' and 'sentences' must both be lists")
    if len(stamps) != len(sentences):
        raise RecordError(where, f"{len(stamps)} timestamps but {len(sentences)} sentences")
    duration: float | None = None
    if entry.get("duration") is not None:
        try:
            duration = _number(entry["duration"])
        except (TypeError, ValueError):
            raise RecordError(where, f"'duration' must be a number, got {entry['duration']!r}") from None
    events: list[Event] = []
    for i, (stamp, sentence) in enumerate(zip(stamps, sentences)):
        if not (isinstance(stamp, (list, tuple)) and len(stamp) == 2):
            raise RecordError(where, f"timestamps[{i}] must be [start, end], got {stamp!r}")
        try:
            start, end = _number(stamp[0]), _number(stamp[1])
        except (TypeError, ValueError):
            raise RecordError(where, f"timestamps[{i}] must hold numbers, got {stamp!r}") from None
        if not isinstance(sentence, str) or not sentence.strip():
            raise RecordError(where, f"sentences[{i}] must be a non-empty string")
        events.append((start, end, sentence.strip()))
    return VideoEvents(video, duration, tuple(events))


def iter_activitynet_captions(path: str | Path) -> Iterator[VideoEvents | RecordError]:
    """Yield one VideoEvents (or a RecordError naming `file:VIDEO`) per video of the JSON file."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise RecordError(f"{path}:{err.lineno}", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}:1", "expected a JSON object {video_id: {duration, timestamps, sentences}}")
    for video, entry in data.items():
        try:
            yield parse_activitynet_entry(video, entry, f"{path}:{video}")
        except RecordError as err:
            yield err


def read_activitynet_captions(path: str | Path) -> list[VideoEvents]:
    """Read ActivityNet Captions JSON `{vid: {duration, timestamps, sentences}}`, in file order.

    Raises RecordError (naming `file:VIDEO`) on the first malformed entry.
    """
    out: list[VideoEvents] = []
    for item in iter_activitynet_captions(path):
        if isinstance(item, RecordError):
            raise item
        out.append(item)
    return out
