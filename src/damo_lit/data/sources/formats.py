"""The readers of each public annotation format, as Drafts (or Records) for `base.collect`.

| format | file | records |
| --- | --- | --- |
| charades_sta | `VID start end##sentence` lines; durations from Charades_v1_*.csv `length` | one grounding query per line |
| activitynet_captions | JSON `{vid: {duration, timestamps, sentences}}` | a caption (the paragraph) and a grounding query per sentence |
| qvhighlights | JSONL with `qid, query, duration, vid, relevant_windows` | one grounding query (all its windows) per line |
| caption_list | CSV or JSONL, InternVid / WebVid style: video path + caption [+ duration] | one caption per row |
| damo_jsonl | DaMO JSONL (schema.py) | as written |
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from damo_lit.data.schema import Record, RecordError, json_lines, read_jsonl
from damo_lit.data.sources.base import Draft, SourceSpec, grounding_build
from damo_lit.data.sources.events import iter_activitynet_captions, iter_charades_sta, read_charades_durations

Item = Draft | Record | RecordError
Reader = Callable[[SourceSpec, Path], Iterator[Item]]


def _video_name(video_id: str, ext: str) -> str:
    return video_id if Path(video_id).suffix else video_id + ext


def charades_sta(spec: SourceSpec, path: Path) -> Iterator[Item]:
    durations: dict[str, float] = {}
    for csv_path in spec.durations:
        durations.update(read_charades_durations(csv_path))
    for item in iter_charades_sta(path):
        if isinstance(item, RecordError):
            yield item
            continue
        yield Draft(
            where=f"{path}:{item.lineno}",
            id=f"charades_sta-{item.video}-{item.lineno}",
            video=_video_name(item.video, spec.video_ext),
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
    for item in iter_activitynet_captions(path):
        if isinstance(item, RecordError):
            yield item
            continue
        where = f"{path}:{item.video}"
        video = _video_name(item.video, spec.video_ext)
        meta = {"source": spec.label}
        windows = [(s, e) for s, e, _ in item.events]
        yield Draft(where, f"activitynet-{item.video}-caption", video, item.duration, "caption", windows,
                    _paragraph_build(item.events), meta=meta)
        for i, (start, end, sentence) in enumerate(item.events):
            yield Draft(where, f"activitynet-{item.video}-g{i}", video, item.duration, "grounding", [(start, end)],
                        grounding_build(sentence), meta={**meta, "query": sentence})


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
        yield Draft(where, f"qvhighlights-{obj['qid']}", _video_name(str(obj["vid"]), spec.video_ext), duration,
                    "grounding", windows, grounding_build(obj["query"]),
                    meta={"source": spec.label, "qid": obj["qid"], "query": obj["query"]})


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


VIDEO_COLUMNS = ("video", "video_path", "path", "clip", "videoid", "YoutubeID", "vid")
CAPTION_COLUMNS = ("caption", "Caption", "text", "name", "title")
DURATION_COLUMNS = ("duration", "Duration", "length")


def _rows(path: Path) -> Iterator[tuple[str, Any] | RecordError]:
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            for row in reader:
                yield f"{path}:{reader.line_num}", row
    else:
        yield from _json_lines(path)


def _column(row: dict[str, Any], wanted: str | None, candidates: tuple[str, ...]) -> str | None:
    if wanted:
        return wanted if wanted in row else None
    return next((c for c in candidates if c in row), None)


def caption_list(spec: SourceSpec, path: Path) -> Iterator[Item]:
    for item in _rows(path):
        if isinstance(item, RecordError):
            yield item
            continue
        where, row = item
        if not isinstance(row, dict):
            yield RecordError(where, "expected an object (JSONL) or a CSV row")
            continue
        video_key = _column(row, spec.columns.get("video"), VIDEO_COLUMNS)
        caption_key = _column(row, spec.columns.get("caption"), CAPTION_COLUMNS)
        duration_key = _column(row, spec.columns.get("duration"), DURATION_COLUMNS)
        if video_key is None or caption_key is None:
            yield RecordError(
                where,
                f"no video or caption column among {sorted(row)} (set data.columns.video / data.columns.caption)",
            )
            continue
        video, caption = str(row[video_key] or "").strip(), str(row[caption_key] or "").strip()
        if not video or not caption:
            yield RecordError(where, f"empty {video_key!r} or {caption_key!r}")
            continue
        duration = _duration(row.get(duration_key)) if duration_key else None
        rid = f"{spec.label}-{where.rsplit(':', 1)[1]}"
        yield Draft(where, rid, _video_name(video, spec.video_ext), duration, "caption", [],
                    lambda kept, c=caption: ([], c), meta={"source": spec.label})


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
