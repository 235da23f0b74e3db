"""The DaMO JSONL schema: one annotation record per line, shared by every data source.

A record names one video (relative to a root), its duration, the task it serves and the
spans (in seconds) that its text talks about. Timestamps never appear as literal numbers in
answer text: they are written as placeholders (`{span:0}`, `{start:1}`, `{end:1}`) that refer
to `spans` and are rendered at load time in the timestamp format the config asks for
(seconds or relative), so that one annotation file serves every format.

Example (one line)::

    {"id": "synth-train-000012-g0", "video": "videos/train_000012.mp4", "duration": 14.2,
     "task": "grounding", "spans": [[3.2, 5.0]], "modality": "audio",
     "turns": [{"role": "user", "content": "When does the high beeping tone sound?"},
               {"role": "assistant", "content": "It sounds {span:0}."}]}
"""

from __future__ import annotations

import codecs
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable, Iterator

from damo_lit.values import is_number

TASKS = ("caption", "grounding", "qa", "dialogue")
MODALITIES = ("audio", "visual", "audio-visual")
ROLES = ("user", "assistant")
PLACEHOLDER = re.compile(r"\{(span|start|end):(\d+)\}")
# The token at which the video's embeddings are spliced in: the prompt places exactly one, so
# annotation text may hold none (one more would take a second slot in the sequence).
VIDEO_TOKEN = "<video>"
# Tasks whose final answer is scored against the spans it refers to (stages 3 and 4).
EVALUATED_BY_SPAN = ("grounding", "dialogue")


class RecordError(ValueError):
    """A record that does not follow the schema; the message names `file:line` and the reason."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    content: str  # may hold {span:i} / {start:i} / {end:i} placeholders


@dataclass(frozen=True)
class Record:
    """One annotation: a video, what to learn from it, and the spans its text refers to."""

    id: str
    video: str
    duration: float
    task: str
    spans: tuple[tuple[float, float], ...] = ()
    caption: str | None = None
    turns: tuple[Turn, ...] = ()
    modality: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "<record>") -> "Record":
        """Validate a parsed JSON object; raise RecordError naming `where` and the reason."""
        if not isinstance(obj, dict):
            raise RecordError(where, f"expected a JSON object, got {type(obj).__name__}")
        for key in ("id", "video", "duration", "task"):
            if key not in obj:
                raise RecordError(where, f"missing required key '{key}'")
        rid, video, task = obj["id"], obj["video"], obj["task"]
        if not isinstance(rid, str) or not rid:
            raise RecordError(where, "'id' must be a non-empty string")
        if not isinstance(video, str) or not video:
            raise RecordError(where, "'video' must be a non-empty path string")
        duration = _number(obj["duration"])
        if duration is None:
            raise RecordError(where, f"'duration' must be a number, got {obj['duration']!r}")
        if not math.isfinite(duration) or duration <= 0:
            raise RecordError(where, f"'duration' must be > 0 seconds, got {obj['duration']!r}")
        if task not in TASKS:
            raise RecordError(where, f"'task' must be one of {', '.join(TASKS)}, got {task!r}")
        spans = cls._spans(obj.get("spans", []), duration, where)
        caption = obj.get("caption")
        if caption is not None and (not isinstance(caption, str) or not caption.strip()):
            raise RecordError(where, "'caption' must be a non-empty string when given")
        if caption is not None:
            _check_placeholders(caption, len(spans), where, "'caption'")
        turns = cls._turns(obj.get("turns", []), len(spans), where)
        modality = obj.get("modality")
        if modality is not None and modality not in MODALITIES:
            raise RecordError(where, f"'modality' must be one of {', '.join(MODALITIES)}, got {modality!r}")
        if task == "caption" and caption is None:
            raise RecordError(where, "a 'caption' record needs a 'caption'")
        if task in ("grounding", "qa", "dialogue") and not turns:
            raise RecordError(where, f"a '{task}' record needs 'turns' (user and assistant)")
        if task == "grounding" and not spans:
            raise RecordError(where, "a 'grounding' record needs at least one span")
        if task in EVALUATED_BY_SPAN and not PLACEHOLDER.search(turns[-1].content):
            raise RecordError(where, f"the final answer of a '{task}' record must refer to the span it is scored "
                                     "against with a placeholder ({span:0}, or {start:0} and {end:0}): a time "
                                     "written as a number is neither rendered in the configured timestamp format "
                                     "nor scored")  # fmt: skip
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise RecordError(where, "'meta' must be an object")
        return cls(rid, video, duration, task, spans, caption, turns, modality, dict(meta))

    @staticmethod
    def _spans(raw: Any, duration: float, where: str) -> tuple[tuple[float, float], ...]:
        if not isinstance(raw, list):
            raise RecordError(where, "'spans' must be a list of [start, end] pairs")
        spans = []
        for i, span in enumerate(raw):
            if not (isinstance(span, (list, tuple)) and len(span) == 2):
                raise RecordError(where, f"spans[{i}] must be [start, end], got {span!r}")
            start, end = _number(span[0]), _number(span[1])
            if start is None or end is None:
                raise RecordError(where, f"spans[{i}] must hold numbers, got {span!r}")
            if not (math.isfinite(start) and math.isfinite(end)):
                raise RecordError(where, f"spans[{i}] is not finite: {span!r}")
            if end < start:
                raise RecordError(where, f"spans[{i}] is reversed: start {start} > end {end}")
            if end == start:
                raise RecordError(where, f"spans[{i}] is empty: start == end == {start}")
            if start < 0 or end > duration + 1e-6:
                raise RecordError(where, f"spans[{i}] = [{start}, {end}] lies outside the video (0 to {duration} s)")
            spans.append((start, end))
        return tuple(spans)

    @staticmethod
    def _turns(raw: Any, n_spans: int, where: str) -> tuple[Turn, ...]:
        if not isinstance(raw, list):
            raise RecordError(where, "'turns' must be a list of {role, content} objects")
        turns = []
        for i, turn in enumerate(raw):
            if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
                raise RecordError(where, f"turns[{i}] must be an object with 'role' and 'content'")
            role, content = turn["role"], turn["content"]
            if role not in ROLES:
                raise RecordError(where, f"turns[{i}].role must be 'user' or 'assistant', got {role!r}")
            if not isinstance(content, str) or not content.strip():
                raise RecordError(where, f"turns[{i}].content must be a non-empty string")
            _check_placeholders(content, n_spans, where, f"turns[{i}]")
            turns.append(Turn(role, content))
        if turns and turns[0].role != "user":
            raise RecordError(where, "turns must start with a 'user' turn")
        for i in range(1, len(turns)):
            if turns[i].role == turns[i - 1].role:
                raise RecordError(where, f"turns[{i}] repeats role {turns[i].role!r}: roles must alternate")
        if turns and turns[-1].role != "assistant":
            raise RecordError(where, "turns must end with an 'assistant' turn: the answer that is learned and scored")
        return tuple(turns)

    @property
    def answer_spans(self) -> tuple[tuple[float, float], ...]:
        """The spans the final answer (the caption of a caption record) refers to: what stages 3
        and 4, damo-eval and damo-score score a generated answer against."""
        final = self.turns[-1].content if self.turns else (self.caption or "")
        return tuple(self.spans[i] for i in sorted({int(m.group(2)) for m in PLACEHOLDER.finditer(final)}))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "video": self.video,
            "duration": round(self.duration, 3),
            "task": self.task,
            "spans": [[round(s, 3), round(e, 3)] for s, e in self.spans],
        }
        if self.caption is not None:
            out["caption"] = self.caption
        if self.turns:
            out["turns"] = [{"role": t.role, "content": t.content} for t in self.turns]
        if self.modality is not None:
            out["modality"] = self.modality
        if self.meta:
            out["meta"] = self.meta
        return out


def _number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (true, "10", null), which the schema
    refuses rather than reads as 1.0 or 10.0."""
    return float(value) if is_number(value) else None


def _check_placeholders(text: str, n_spans: int, where: str, what: str) -> None:
    """Every {span:i} / {start:i} / {end:i} of `text` must name one of the record's spans, and
    no text may hold the video token itself."""
    if VIDEO_TOKEN in text:
        raise RecordError(where, f"{what} holds {VIDEO_TOKEN}, the token the video is spliced in at: the prompt "
                                 "places it once by itself, so annotation text may not")
    for match in PLACEHOLDER.finditer(text):
        if int(match.group(2)) >= n_spans:
            raise RecordError(where, f"{what} refers to {match.group(0)} but the record has {n_spans} span(s)")


# Text files are UTF-8. Excel and PowerShell open them with a byte-order mark, which is no part of
# the first line; a line that is not UTF-8 (a file saved as Latin-1) is one bad record named
# `file:line`, never the end of the whole load.
BOM = codecs.BOM_UTF8


def not_utf8(data: bytes, position: int) -> tuple[int, str]:
    """(line number, reason) for the byte at `position` of `data` that does not decode: the reason
    names the byte and where it stands in its line."""
    line_start = data.rfind(b"\n", 0, position) + 1
    byte = data[position : position + 1].hex()
    return data.count(b"\n", 0, position) + 1, f"not UTF-8 text (byte 0x{byte} at byte {position - line_start + 1})"


def decode_line(raw: bytes, where: str, first: bool) -> str | RecordError:
    """One line of a text file as text (a byte-order mark left out of the `first`), or the
    RecordError naming `where` when it is not UTF-8."""
    start = len(BOM) if first and raw.startswith(BOM) else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        return RecordError(where, not_utf8(raw, start + err.start)[1])


def json_lines(path: str | Path) -> Iterator[tuple[int, str, Any | RecordError]]:
    """(line number, 'file:line', parsed value or RecordError) for each non-blank line of a JSON
    lines file: the one reader behind every JSONL format, so that all name their bad lines alike."""
    path = Path(path)
    with path.open("rb") as handle:  # bytes: one line that is not UTF-8 is one bad record, not a crash
        for lineno, raw in enumerate(handle, start=1):
            where = f"{path}:{lineno}"
            line = decode_line(raw, where, lineno == 1)
            if isinstance(line, RecordError):
                yield lineno, where, line
                continue
            if not line.strip():
                continue
            try:
                yield lineno, where, json.loads(line)
            except json.JSONDecodeError as err:
                yield lineno, where, RecordError(where, f"not valid JSON ({err.msg} at column {err.colno})")


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Record | RecordError]]:
    """Yield (line number, Record or RecordError) for each non-blank line of a DaMO JSONL file."""
    for lineno, where, obj in json_lines(path):
        if isinstance(obj, RecordError):
            yield lineno, obj
            continue
        try:
            yield lineno, Record.from_dict(obj, where)
        except RecordError as err:
            yield lineno, err


def video_path_problem(video: str) -> str | None:
    """Why `video` is not a path inside the video root (None when it is): an absolute path or a `..`
    part would read a file outside `data.video_dir`, so the same annotations would not move with it."""
    if PurePosixPath(video).is_absolute() or PureWindowsPath(video).is_absolute() or video.startswith("~"):
        return f"'video' must be relative to the video folder (data.video_dir), got the absolute or home path {video!r}"
    if ".." in re.split(r"[\\/]", video):
        return f"'video' must stay inside the video folder (data.video_dir), got {video!r} with a '..' part"
    return None


def validate_files(paths: Iterable[str | Path]) -> tuple[int, list[RecordError]]:
    """(good records, errors) of DaMO JSONL files checked together: each record against the schema,
    its video relative to the video folder, its id unique across the files (a duplicate names both
    places; ids key predictions and evaluation, and the same id in two splits is a leak)."""
    seen: dict[str, str] = {}
    good, errors = 0, []
    for path in paths:
        for lineno, item in read_jsonl(path):
            if not isinstance(item, RecordError):
                item = _file_level_error(item, f"{path}:{lineno}", seen)
            if item is None:
                good += 1
            else:
                errors.append(item)
    return good, errors


def _file_level_error(record: Record, where: str, seen: dict[str, str]) -> RecordError | None:
    """What the schema of one record cannot see: its video path, and an id used before (`seen`: id -> where)."""
    first = seen.setdefault(record.id, where)
    problem = video_path_problem(record.video)
    if problem is not None:
        return RecordError(where, problem)
    if first != where:
        return RecordError(where, f"duplicate id {record.id!r}: also at {first}")
    return None


def write_jsonl(path: str | Path, records: Iterator[Record] | list[Record]) -> int:
    """Write records as DaMO JSONL (atomically: a crash never leaves half a file). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count
