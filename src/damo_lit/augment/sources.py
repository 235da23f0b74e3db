"""Read paragraph-level annotations into cleaned `Video`s, counting every fix made to them.

The readers of the real formats live in damo_lit.data.sources.events (they return the events
unfixed) and windows are fixed by the same `fix_window` as the training data sources; this
module only dispatches, groups DaMO JSONL records per video, and merges windows into moments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from damo_lit.augment.items import Moment, Video
from damo_lit.data.schema import RecordError, read_jsonl
from damo_lit.data.sources.base import ON_BAD_WINDOW, Fixes, fix_window
from damo_lit.data.sources.events import (
    VideoEvents,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
)

FORMATS = ("activitynet", "charades_sta", "damo")
_SPACES = re.compile(r"\s+")


class SourceError(ValueError):
    """An input that cannot be read as asked; the message names the file or config key."""


@dataclass(frozen=True)
class LoadedSource:
    """The cleaned videos of one input file and the fixes that cleaning made (kind -> count)."""

    videos: list[Video]
    fixes: dict[str, int]


def read_events(path: str | Path, fmt: str, durations: str | Path | None = None) -> list[VideoEvents]:
    """Read an annotation file of format `fmt` into per-video events (unfixed)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise SourceError(f"format={fmt!r} is not supported; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise SourceError(f"input={path}: no such file")
    if fmt == "activitynet":
        return read_activitynet_captions(path)
    if fmt == "charades_sta":
        if durations is None:
            raise SourceError(
                "format=charades_sta needs durations=FILE (a Charades_v1_*.csv whose 'length' column "
                "gives each video's duration): Charades-STA lines carry no duration"
            )
        if not Path(durations).is_file():
            raise SourceError(f"durations={durations}: no such file")
        return read_charades_sta(path, read_charades_durations(durations))
    return read_damo_events(path)


def read_damo_events(path: str | Path) -> list[VideoEvents]:
    """Group the caption and grounding records of a DaMO JSONL file into events per video.

    A caption record with spans gives (span, caption); a grounding record gives (span, text)
    where the text is its `caption`, or its meta "query" / "sentence" / "description". Records
    of other tasks and records without a span or a text are skipped; invalid lines raise.
    """
    by_video: dict[str, list[tuple[float, float, str]]] = {}
    durations: dict[str, float] = {}
    for _lineno, rec in read_jsonl(path):
        if isinstance(rec, RecordError):
            raise SourceError(f"input={path} is not valid DaMO JSONL: {rec}")
        if rec.task not in ("caption", "grounding") or not rec.spans:
            continue
        text = rec.caption
        for key in ("query", "sentence", "description"):
            if text is None and isinstance(rec.meta.get(key), str):
                text = rec.meta[key]
        if text is None:
            continue
        durations.setdefault(rec.video, rec.duration)
        events = by_video.setdefault(rec.video, [])
        for start, end in rec.spans:
            events.append((start, end, text))
    return [VideoEvents(video=v, duration=durations[v], events=tuple(ev)) for v, ev in by_video.items()]


def clean_sentence(text: str) -> str:
    """Collapse whitespace and drop the final full stop, so that a sentence can sit inside a question."""
    text = _SPACES.sub(" ", str(text)).strip()
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


def load_videos(
    path: str | Path,
    fmt: str,
    durations: str | Path | None = None,
    video_path: str = "{video}.mp4",
    limit: int | None = None,
    on_bad_window: str = "clip",
) -> LoadedSource:
    """Read and clean the videos of one annotation file (the first `limit` when given).

    `video_path` formats the record's `video` field from the source id ("{video}.mp4"); DaMO
    JSONL input keeps its records' paths as they are. `on_bad_window` (clip | drop) says what
    happens to a window that runs past the video or is reversed, as in the data configs.
    """
    if on_bad_window not in ON_BAD_WINDOW:
        raise SourceError(f"on_bad_window must be one of {', '.join(ON_BAD_WINDOW)}, got {on_bad_window!r}")
    if "{video}" not in video_path:
        raise SourceError(f"video_path={video_path!r} must contain '{{video}}'")
    raw = read_events(path, fmt, durations)
    if limit is not None:
        raw = raw[: int(limit)]
    fixes = Fixes()
    videos = []
    for events in raw:
        record_path = events.video if fmt == "damo" else video_path.format(video=events.video)
        video = clean_video(events, record_path, fixes, on_bad_window)
        if video is not None:
            videos.append(video)
    return LoadedSource(videos, {kind: n for kind, n in fixes.counts.items() if n})
