"""The readers of each public annotation format, as Drafts (or Records) for `base.collect`.

| format | file | records |
| --- | --- | --- |
| charades_sta | `VID start end##sentence` lines; durations from Charades_v1_*.csv `length` | one grounding query per line |
| activitynet_captions | JSON `{vid: {duration, timestamps, sentences}}` | a caption (the paragraph) and a grounding query per sentence |
| qvhighlights | JSONL with `qid, query, duration, vid, relevant_windows` | one grounding query (all its windows) per line |
| caption_list | CSV or JSONL, InternVid / WebVid style: video + caption [+ duration, clip start/end, folder] | one caption per row |
| damo_jsonl | DaMO JSONL (schema.py) | as written |
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator

from damo_lit.data.schema import Record, RecordError, json_lines, read_jsonl
from damo_lit.data.sources.base import Draft, SourceSpec, csv_rows, grounding_build
from damo_lit.data.sources.events import iter_activitynet_captions, iter_charades_durations, iter_charades_sta
from damo_lit.data.timestamps import clock_seconds

Item = Draft | Record | RecordError
Reader = Callable[[SourceSpec, Path], Iterator[Item]]


VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


def video_file_name(video_id: str, ext: str) -> str:
    """The file of a video id: `ext` appended unless the id already ends in a container suffix.

    Any suffix is not enough: QVHighlights ids such as `-4Mlqc7PbZY_210.0_360.0` end in `.0`.
    """
    suffix = Path(video_id).suffix.lower()
    return video_id if suffix in VIDEO_SUFFIXES or suffix == ext.lower() else video_id + ext


def charades_sta(spec: SourceSpec, path: Path) -> Iterator[Item]:
    """One grounding Draft per line; a durations row that is not UTF-8 is a bad record too (its
    video then has no known duration). A video listed with an unusable length is known: its
    duration is probed from the file, or its queries are dropped and counted."""
    durations: dict[str, float | None] = {}  # a listed video whose length is unusable: None
    for csv_path in spec.durations:
        for row in iter_charades_durations(csv_path):
            if isinstance(row, RecordError):
                yield row
            elif row[1] is not None or row[0] not in durations:
                durations[row[0]] = row[1]
    for item in iter_charades_sta(path):
        if isinstance(item, RecordError):
            yield item
            continue
        yield Draft(
            where=f"{path}:{item.lineno}",
            id=f"charades_sta-{item.video}-{item.lineno}",
            video=video_file_name(item.video, spec.video_ext),
            duration=durations.get(item.video),
            task="grounding",
            windows=[(item.start, item.end)],
            build=grounding_build(item.sentence),
            meta={"source": spec.label, "query": item.sentence},
            known_video=not spec.durations or item.video in durations,
        )


def _paragraph_build(events: tuple[tuple[float, float, str], ...]):
    def build(kept: list[int]) -> tuple[list[tuple[str, str]], str | None]:
        parts = []
        for i, (_s, _e, sentence) in enumerate(events):
            text = sentence.strip().rstrip(".!? ")
            parts.append(f"{text} {{span:{kept.index(i)}}}." if i in kept else f"{text}.")
        return [], " ".join(parts)

    return build


def activitynet_captions(spec: SourceSpec, path: Path) -> Iterator[Item]:
    """A paragraph caption per video and a grounding query per sentence; each window's fix-up is
    counted once, with the paragraph (the queries repeat its windows)."""
    for item in iter_activitynet_captions(path):
        if isinstance(item, RecordError):
            yield item
            continue
        where = f"{path}:{item.video}"
        video = video_file_name(item.video, spec.video_ext)
        meta = {"source": spec.label}
        windows = [(s, e) for s, e, _ in item.events]
        yield Draft(where, f"activitynet-{item.video}-caption", video, item.duration, "caption", windows,
                    _paragraph_build(item.events), meta=meta)
        for i, (start, end, sentence) in enumerate(item.events):
            yield Draft(where, f"activitynet-{item.video}-g{i}", video, item.duration, "grounding", [(start, end)],
                        grounding_build(sentence), meta={**meta, "query": sentence}, windows_counted=False)


def _json_lines(path: Path) -> Iterator[tuple[str, Any] | RecordError]:
    for _, where, obj in json_lines(path):
        yield obj if isinstance(obj, RecordError) else (where, obj)


def qvhighlights(spec: SourceSpec, path: Path) -> Iterator[Item]:
    for item in _json_lines(path):
        if isinstance(item, RecordError):
            yield item
            continue
        where, obj = item
        if not isinstance(obj, dict) or not all(k in obj for k in ("qid", "query", "vid")):
            yield RecordError(where, "expected an object with qid, query, vid, duration, relevant_windows")
            continue
        raw = obj.get("relevant_windows")
        if not isinstance(raw, list) or not raw:
            yield RecordError(where, "no relevant_windows (a test split without labels?)")
            continue
        try:
            windows = [(float(w[0]), float(w[1])) for w in raw]
        except (TypeError, ValueError, IndexError):
            yield RecordError(where, f"relevant_windows must be [[start, end], ...], got {raw!r}")
            continue
        if not isinstance(obj["query"], str) or not obj["query"].strip():
            yield RecordError(where, "'query' must be a non-empty string")
            continue
        duration = _duration(obj.get("duration"))
        yield Draft(where, f"qvhighlights-{obj['qid']}", video_file_name(str(obj["vid"]), spec.video_ext), duration,
                    "grounding", windows, grounding_build(obj["query"]),
                    meta={"source": spec.label, "qid": obj["qid"], "query": obj["query"], "vid": obj["vid"]})


_ISO_DURATION = re.compile(r"^P(?:T)?(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?$")


def _duration(value: Any) -> float | None:
    """A duration in seconds from a number, a numeric string or WebVid's ISO 8601 'PT00H00M11S'."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        match = _ISO_DURATION.match(str(value).strip())
        if not match or not any(match.groups()):
            return None
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    return seconds if seconds > 0 else None


# caption_list columns: data.columns.KEY names one, else the first of these that a row has.
COLUMNS: dict[str, tuple[str, ...]] = {
    "video": ("video", "video_path", "path", "clip", "videoid", "YoutubeID", "vid"),
    "caption": ("caption", "Caption", "text", "name", "title"),
    "duration": ("duration", "Duration", "length"),
    "start": ("Start_timestamp", "start", "start_time"),  # InternVid: the clip within the video, hh:mm:ss.mmm
    "end": ("End_timestamp", "end", "end_time"),
    "folder": ("page_dir",),  # WebVid: the video is page_dir/videoid.mp4
}


def _rows(path: Path) -> Iterator[tuple[str, Any] | RecordError]:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        yield from csv_rows(path, delimiter="\t" if suffix == ".tsv" else ",")
    else:
        yield from _json_lines(path)


def _columns(spec: SourceSpec, row: dict[str, Any], where: str) -> dict[str, str | None] | RecordError:
    """The column of each COLUMNS key in `row` (None: absent); an error for a named column it lacks."""
    found: dict[str, str | None] = {}
    for key, candidates in COLUMNS.items():
        wanted = spec.columns.get(key)
        if wanted and wanted not in row:
            return RecordError(where, f"no column {wanted!r} ({spec.key}.columns.{key}) among {sorted(row)}")
        found[key] = wanted or next((c for c in candidates if c in row), None)
    return found


def _text(row: dict[str, Any], column: str | None) -> str:
    """A cell as stripped text ('' for no column, null or blank); a JSON 0 stays '0' (a clip may start at 0)."""
    value = row.get(column) if column else None
    return "" if value is None else str(value).strip()


Window = tuple[float, float]


def _clip_window(row: dict[str, Any], cols: dict[str, str | None], where: str) -> Window | None | RecordError:
    """The clip (start, end) in seconds that a row's caption describes; None: the whole video."""
    start, end = _text(row, cols["start"]), _text(row, cols["end"])
    if not start and not end:
        return None
    if not start or not end:
        return RecordError(where, f"a clip needs both a start ({cols['start']!r}) and an end ({cols['end']!r})")
    window = (clock_seconds(start), clock_seconds(end))
    if window[0] is None or window[1] is None:
        return RecordError(where, f"clip start/end must be seconds or hh:mm:ss.mmm, got {start!r} and {end!r}")
    return window[0], window[1]


def _caption_draft(spec: SourceSpec, where: str, row: Any) -> Item:
    """One row as a caption Draft: of its clip's span when the row has start/end, else of the whole video."""
    if not isinstance(row, dict):
        return RecordError(where, "expected an object (JSONL) or a CSV row")
    cols = _columns(spec, row, where)
    if isinstance(cols, RecordError):
        return cols
    if cols["video"] is None or cols["caption"] is None:
        return RecordError(
            where, f"no video or caption column among {sorted(row)} (set {spec.key}.columns.video / .caption)"
        )
    video, caption = _text(row, cols["video"]), _text(row, cols["caption"])
    if not video or not caption:
        return RecordError(where, f"empty {cols['video']!r} or {cols['caption']!r}")
    window = _clip_window(row, cols, where)
    if isinstance(window, RecordError):
        return window
    video = video_file_name(video, spec.video_ext)
    folder = _text(row, cols["folder"])
    path = f"{folder}/{video}" if folder else video
    duration = _duration(row.get(cols["duration"])) if cols["duration"] else None
    rid, meta = f"{spec.label}-{where.rsplit(':', 1)[1]}", {"source": spec.label}
    if window is None:
        return Draft(where, rid, path, duration, "caption", [], lambda kept, c=caption: ([], c), meta=meta)
    return Draft(where, rid, path, duration, "caption", [window], _paragraph_build(((*window, caption),)),
                 meta=meta, needs_window=True)


def caption_list(spec: SourceSpec, path: Path) -> Iterator[Item]:
    """One caption per row; an unknown data.columns key fails the source at once (a typo would be guessed over)."""
    unknown = sorted(set(spec.columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"{spec.key}.columns: unknown key(s) {unknown}; expected {', '.join(COLUMNS)}")
    for item in _rows(path):
        yield item if isinstance(item, RecordError) else _caption_draft(spec, *item)


def damo_jsonl(spec: SourceSpec, path: Path) -> Iterator[Item]:
    for _lineno, item in read_jsonl(path):
        yield item


READERS: dict[str, Reader] = {
    "charades_sta": charades_sta,
    "activitynet_captions": activitynet_captions,
    "qvhighlights": qvhighlights,
    "caption_list": caption_list,
    "damo_jsonl": damo_jsonl,
}
