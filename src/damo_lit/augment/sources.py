"""Read paragraph-level annotations into cleaned `Video`s, counting every fix made to them.

The readers of the real formats live in damo_lit.data.sources.events (they return the events
unfixed) and windows are fixed by the same `fix_window` as the training data sources; this
module only dispatches, groups DaMO JSONL records per video, and merges windows into moments.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from damo_lit.augment.describe import caption_events, question_description, strip_placeholders
from damo_lit.augment.items import Moment, Video
from damo_lit.data.schema import PLACEHOLDER, Record, RecordError, read_jsonl
from damo_lit.data.sources.base import ON_BAD_RECORD, ON_BAD_WINDOW, Fixes, fix_window
from damo_lit.data.sources.events import (
    VideoEvents,
    group_by_video,
    iter_activitynet_captions,
    iter_charades_sta,
    read_charades_durations,
)
from damo_lit.files import not_a_file

FORMATS = ("activitynet", "charades_sta", "damo")
DEFAULT_FORMAT = "activitynet"  # conf/augment.yaml `format:`
FORMAT_NAMES = {
    "activitynet": "ActivityNet Captions JSON",
    "charades_sta": "Charades-STA lines (VID start end##sentence)",
    "damo": "DaMO JSONL",
}
_SPACES = re.compile(r"\s+")
_CHARADES_LINE = re.compile(r"^\S+\s+[-+]?\d+(?:\.\d+)?\s+[-+]?\d+(?:\.\d+)?\s*##")


class SourceError(ValueError):
    """An input that cannot be read as asked; the message names the file or config key."""


@dataclass(frozen=True)
class LoadedSource:
    """The cleaned videos of one input file, the fixes that cleaning made (kind -> count), and
    what they were read with (`source_settings`: the resume fingerprint holds it, so that a rerun
    on an edited input or with other source settings is refused rather than mixed in)."""

    videos: list[Video]
    fixes: dict[str, int]
    settings: dict[str, Any] = field(default_factory=dict)


def read_events(path: str | Path, fmt: str, durations: str | Path | None = None) -> list[VideoEvents]:
    """Read an annotation file of format `fmt` into per-video events (unfixed)."""
    return [events for events, _ in _read(path, fmt, durations)[0]]


def _read(
    path: str | Path, fmt: str, durations: str | Path | None, drop_bad: bool = False
) -> tuple[list[tuple[VideoEvents, Counter]], int]:
    """(per video: its events (unfixed) and what reading skipped (DAMO_SKIPS; only DaMO JSONL
    skips), the malformed entries dropped). A malformed entry (a video whose timestamps and
    sentences differ in number, a line that is no record) raises unless `drop_bad`."""
    path = Path(path)
    if fmt not in FORMATS:
        raise SourceError(f"format={fmt!r} is not supported; expected one of {', '.join(FORMATS)}")
    if (problem := not_a_file(path)) is not None:
        raise SourceError(f"input={path}: {problem}")
    if fmt == "damo":
        return read_damo_records(path, drop_bad)
    videos, dropped = _read_public_format(path, fmt, durations, drop_bad)
    return [(events, Counter()) for events in videos], dropped


def _read_public_format(
    path: Path, fmt: str, durations: str | Path | None, drop_bad: bool
) -> tuple[list[VideoEvents], int]:
    if fmt == "charades_sta" and durations is None:
        guess = sniff_format(path)
        if guess not in (None, fmt):  # another format altogether: say that first
            raise SourceError(f"input={path} is not Charades-STA{_format_hint(path, fmt)}")
        raise SourceError(
            "format=charades_sta needs durations=FILE (a Charades_v1_*.csv whose 'length' column "
            "gives each video's duration): Charades-STA lines carry no duration"
        )
    try:
        if fmt == "activitynet":
            items: list[Any] = list(iter_activitynet_captions(path))
        else:
            if (problem := not_a_file(durations)) is not None:
                raise SourceError(f"durations={durations}: {problem}")
            lengths = read_charades_durations(durations)
            items = list(iter_charades_sta(path))
        bad = [item for item in items if isinstance(item, RecordError)]
        if bad and not drop_bad:
            raise bad[0]
        good = [item for item in items if not isinstance(item, RecordError)]
        return (good if fmt == "activitynet" else group_by_video(good, lengths)), len(bad)
    except RecordError as err:
        if not str(err.where).startswith(f"{path}:"):  # the durations CSV: nothing to say about format=
            raise
        file_level = fmt == "activitynet" and err.reason.startswith(("not valid JSON", "expected a JSON object"))
        hint = _format_hint(path, fmt)
        if not hint and not file_level:
            raise  # one bad entry of a file in the right format: its file:line says it all
        raise SourceError(f"input={path} is not {FORMAT_NAMES[fmt]}, which format={fmt}"
                          f"{' (the default)' if fmt == DEFAULT_FORMAT else ''} reads: {err}"
                          f"{hint or _formats_help()}") from None


def _formats_help() -> str:
    listed = ", ".join(f"{name} (the default)" if name == DEFAULT_FORMAT else name for name in FORMATS)
    return f". format= is one of {listed}; see damo-augment --help"


def sniff_format(path: str | Path) -> str | None:
    """Which of FORMATS the start of the file looks like (for error messages only; None: no idea)."""
    try:
        with Path(path).open(encoding="utf-8-sig") as handle:  # a byte-order mark is no part of the first line
            line = next((line.strip() for line in handle if line.strip()), "")
    except (OSError, UnicodeDecodeError):
        return None
    if _CHARADES_LINE.match(line):
        return "charades_sta"
    if not line.startswith("{"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:  # a JSON object over several lines: "{" or '{"v_QOlSCBRmfWY": {'
        return "activitynet" if re.fullmatch(r'\{\s*(?:"[^"]*"\s*:\s*\{)?', line) else None
    if isinstance(obj, dict) and {"video", "task"} <= obj.keys():
        return "damo"
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) and "timestamps" in v for v in obj.values()):
        return "activitynet"
    return None


def _format_hint(path: str | Path, fmt: str) -> str:
    """'. It looks like Charades-STA lines ...: pass format=charades_sta ...', or '' when the file does
    not look like another format."""
    guess = sniff_format(path)
    if guess is None or guess == fmt:
        return ""
    extra = " durations=Charades_v1_*.csv" if guess == "charades_sta" else ""
    return f". It looks like {FORMAT_NAMES[guess]}: pass format={guess}{extra}{_formats_help()}"


# what reading DaMO JSONL leaves out, counted with the source fixes of the summary
DAMO_SKIPS = (
    "damo_span_undescribed_skipped",  # a caption span that no sentence of the caption refers to
    "damo_question_unreadable_skipped",  # a grounding span whose question states no event, and no caption describes
)
_META_TEXT = ("query", "sentence", "description")


def _damo_record_events(rec: Record, skipped: Counter) -> list[tuple[float, float, str | None]]:
    """The (start, end, text) events one DaMO record describes; text None: a grounding span whose
    question states no event (the caller looks for it among the video's captions). Caption spans
    that no sentence describes are counted in `skipped`."""
    if rec.task == "caption" and rec.caption:
        events, undescribed = caption_events(rec.caption, len(rec.spans))
        skipped["damo_span_undescribed_skipped"] += len(undescribed)
        return [(*rec.spans[i], text) for i, text in events.items()]
    # grounding: the query as the source stated it, else a caption, else what the question states
    text = next((rec.meta[k] for k in _META_TEXT if isinstance(rec.meta.get(k), str) and rec.meta[k].strip()), None)
    if text is None and rec.caption:
        text = strip_placeholders(rec.caption)
    answer = ""
    user = next((i for i, t in enumerate(rec.turns) if t.role == "user"), None)
    if user is not None:
        answer = rec.turns[user + 1].content if user + 1 < len(rec.turns) else ""
        if text is None:
            text = question_description(rec.turns[user].content)
    # the spans the answer names (all of them when it names none, as grounding answers do)
    named = sorted({int(m.group(2)) for m in PLACEHOLDER.finditer(answer)} & set(range(len(rec.spans))))
    return [(*rec.spans[i], text) for i in (named or range(len(rec.spans)))]


def read_damo_records(path: str | Path, drop_bad: bool = False) -> tuple[list[tuple[VideoEvents, Counter]], int]:
    """(per video of a DaMO JSONL file: its events, and what was skipped (DAMO_SKIPS kind -> count);
    the invalid lines dropped, with `drop_bad`).

    Caption records give one event per span, described by the sentence(s) of the caption that
    refer to it (placeholders and ordering words like "first," / "then" removed: a plain
    clause, as ActivityNet's sentences); a caption without placeholders describes its span when
    it has exactly one. Grounding records give their spans, described by `meta.query` (or
    "sentence" / "description") as the source stated it, else their `caption`, else their
    question where it states the event word for word ("when does this happen: X?"). A grounding
    span whose question states no event ("when does the red circle appear?", as the synthetic
    set asks) is left to the captions of its video: already described there, it adds nothing;
    described nowhere, it is skipped and counted. qa and dialogue records are not read: their
    answers refer to a span through other turns ("it appears {span:0}"). An invalid line raises
    SourceError unless `drop_bad`.
    """
    by_video: dict[str, list[tuple[float, float, str | None]]] = {}
    skipped: dict[str, Counter] = {}
    durations: dict[str, float] = {}
    dropped = 0
    for _lineno, rec in read_jsonl(path):
        if isinstance(rec, RecordError) and drop_bad:
            dropped += 1
            continue
        if isinstance(rec, RecordError):
            raise SourceError(f"input={path} is not valid DaMO JSONL: {rec}{_format_hint(path, 'damo')}")
        if rec.task not in ("caption", "grounding") or not rec.spans:
            continue
        counts = skipped.setdefault(rec.video, Counter())
        durations.setdefault(rec.video, rec.duration)
        by_video.setdefault(rec.video, []).extend(_damo_record_events(rec, counts))
    out = []
    for video, found in by_video.items():
        described = {(start, end) for start, end, text in found if text is not None}
        undescribed = {(start, end) for start, end, text in found if text is None} - described
        skipped[video]["damo_question_unreadable_skipped"] += len(undescribed)
        events = tuple((start, end, text) for start, end, text in found if text is not None)
        out.append((VideoEvents(video=video, duration=durations[video], events=events), skipped[video]))
    return out, dropped


def read_damo_events(path: str | Path) -> list[VideoEvents]:
    """The events per video of a DaMO JSONL file (see `read_damo_records`)."""
    return [events for events, _ in read_damo_records(path)[0]]


def clean_sentence(text: str) -> str:
    """Collapse whitespace and drop the final full stop, so that a sentence can sit inside a question.

    A placeholder ({span:0}) or a stray brace in a source sentence is removed: inside a generated
    question it would refer to a span of that item, not of the source."""
    text = str(text)
    if "{" in text or "}" in text:
        text = strip_placeholders(text)
    text = _SPACES.sub(" ", text).strip()
    return text.rstrip(". ").strip()


def clean_video(events: VideoEvents, path: str, fixes: Fixes, on_bad_window: str = "clip") -> Video | None:
    """Fix the windows to the video (as the data sources do, counted in `fixes`), merge identical
    windows into moments. Returns None when the video has no duration or no window left."""
    if events.duration is None or events.duration <= 0:
        fixes.add("duration_missing_dropped")
        return None
    duration = round(float(events.duration), 3)
    windows: dict[tuple[float, float], list[tuple[str, int]]] = {}
    for index, (start, end, sentence) in enumerate(events.events):
        window = fix_window(float(start), float(end), duration, on_bad_window, fixes)
        text = clean_sentence(sentence)
        if window is None or not text:
            continue
        start, end = round(window[0], 3), round(window[1], 3)
        if end > start:
            windows.setdefault((start, end), []).append((text, index))
    if not windows:
        fixes.add("record_no_window_dropped")
        return None
    moments = []
    for (start, end), described in sorted(windows.items()):
        sentences = tuple(dict.fromkeys(text for text, _ in described))
        moments.append(Moment(start, end, sentences, tuple(i for _, i in described)))
    return Video(video=events.video, path=path, duration=duration, moments=tuple(moments))


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in chunks (an annotation file may be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_settings(
    path: str | Path, fmt: str, durations: str | Path | None, video_path: str, on_bad_window: str,
    on_bad_record: str = "error",
) -> dict[str, Any]:
    """Everything on the input side that decides the items: the files' contents (not only their
    names: an edited sentence must not be resumed as if nothing changed), format= and how
    windows are fixed, bad entries treated and paths written. `limit` is not part of it: a larger
    limit continues a run."""
    settings = {"format": fmt, "input_sha256": file_sha256(path), "on_bad_window": on_bad_window,
                "video_path": video_path}
    if on_bad_record != "error":  # (the default leaves the settings of earlier runs as they were)
        settings["on_bad_record"] = on_bad_record
    if durations is not None:
        settings["durations_sha256"] = file_sha256(durations)
    return settings


def check_limit(limit: Any) -> int | None:
    """limit= as a number of videos, None for all. Anything else is a mistake: a negative slice
    would silently keep all but the last videos, and 0 would leave nothing to do."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise SourceError(f"limit={limit}: expected a whole number of videos >= 1 (the first N of the input), "
                          "or limit=null for all of them")
    return limit


def load_videos(
    path: str | Path,
    fmt: str,
    durations: str | Path | None = None,
    video_path: str = "{video}.mp4",
    limit: int | None = None,
    on_bad_window: str = "clip",
    on_bad_record: str = "error",
) -> LoadedSource:
    """Read and clean the videos of one annotation file (the first `limit` when given, >= 1).

    `video_path` formats the record's `video` field from the source id ("{video}.mp4"); DaMO
    JSONL input keeps its records' paths as they are. `on_bad_window` (clip | drop) says what
    happens to a window that runs past the video or is reversed, and `on_bad_record` (error |
    drop) to a malformed entry, as in the data configs: a drop is counted, never silent.
    """
    if on_bad_window not in ON_BAD_WINDOW:
        raise SourceError(f"on_bad_window must be one of {', '.join(ON_BAD_WINDOW)}, got {on_bad_window!r}")
    if on_bad_record not in ON_BAD_RECORD:
        raise SourceError(f"on_bad_record must be one of {', '.join(ON_BAD_RECORD)}, got {on_bad_record!r}")
    if "{video}" not in video_path:
        raise SourceError(f"video_path={video_path!r} must contain '{{video}}'")
    limit = check_limit(limit)
    pairs, dropped = _read(path, fmt, durations, drop_bad=on_bad_record == "drop")
    pairs = pairs[:limit]
    fixes = Fixes()
    skipped: Counter = Counter()
    videos = []
    for events, skips in pairs:
        skipped.update(skips)
        record_path = events.video if fmt == "damo" else video_path.format(video=events.video)
        video = clean_video(events, record_path, fixes, on_bad_window)
        if video is not None:
            videos.append(video)
    counts = {kind: n for kind, n in fixes.counts.items() if n}
    counts.update({kind: n for kind, n in skipped.items() if n})
    if dropped:
        counts["record_malformed_dropped"] = dropped
    return LoadedSource(videos, counts, source_settings(path, fmt, durations, video_path, on_bad_window, on_bad_record))
