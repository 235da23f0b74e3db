"""Raw paragraph-level readers: each video's events exactly as the public release states them.

These readers do not fix anything: a window that ends after the video, a reversed or empty
window, or a missing duration comes back as written. Fixing (clip or drop, counted) is the
job of the record sources built on top of them (`damo_lit.data.sources`), and the
augmentation tool reads the same raw events to generate temporally grounded QA.

A malformed line or entry raises `RecordError` naming `file:line` (or `file:VIDEO` for JSON
files) and the reason. The `iter_*` generators yield such errors instead of raising, so that
a caller can count and drop them.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from damo_lit.data.schema import RecordError

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
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            head, sep, sentence = line.partition("##")
            parts = head.split()
            if not sep or len(parts) != 3:
                yield RecordError(where, f"expected 'VID start end##sentence', got {line[:80]!r}")
                continue
            try:
                start, end = _number(parts[1]), _number(parts[2])
            except ValueError:
                yield RecordError(where, f"start and end must be numbers, got {parts[1]!r} and {parts[2]!r}")
                continue
            sentence = sentence.strip()
            if not sentence:
                yield RecordError(where, "the sentence after '##' is empty")
                continue
            yield CharadesLine(lineno, parts[0], start, end, sentence)


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


def read_charades_durations(csv_path: str | Path) -> dict[str, float]:
    """Video id -> duration in seconds, from the `length` column of Charades_v1_{train,test}.csv.

    Rows with an empty or non-numeric length are left out (the caller sees the video as having
    no duration); a file without `id` and `length` columns raises RecordError.
    """
    csv_path = Path(csv_path)
    with csv_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"id", "length"} - set(reader.fieldnames or ())
        if missing:
            raise RecordError(
                f"{csv_path}:1", f"expected a Charades CSV header with 'id' and 'length', missing {sorted(missing)}"
            )
        out: dict[str, float] = {}
        for row in reader:
            try:
                length = _number(row["length"])
            except (TypeError, ValueError):
                continue
            if length > 0:
                out[row["id"]] = length
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
        data = json.loads(path.read_text(encoding="utf-8"))
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
