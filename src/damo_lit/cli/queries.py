"""damo-predict's query files: many questions about many videos, one JSON object per line.

Two kinds of line, which may be mixed:
- `{"video": "clips/a.mp4", "question": "when does the dog bark?", "id": "a-1"}` ("id" optional:
  the line number otherwise); a relative video is found under video_dir (default: the file's
  folder);
- an official QVHighlights line, `{"qid": 2579, "query": "A girl cooks ...", "vid": "NUsG9BgSes0_210.0_360.0"}`
  (the test release has no windows: this is how its answers are made): the video is
  `<video_dir>/<vid>.mp4` and the question is asked as training asks QVHighlights queries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from damo_lit.data.schema import RecordError, json_lines
from damo_lit.data.sources.base import sentence_question
from damo_lit.data.sources.formats import video_file_name
from damo_lit.files import not_a_file

QVH_KEYS = ("qid", "query", "vid")
MAX_LISTED = 10  # bad lines named in one error


@dataclass(frozen=True)
class Query:
    """One question to answer: its id, video file and question as asked."""

    id: Any
    video: Path
    question: str
    official: dict[str, Any] = field(default_factory=dict)  # QVHighlights: qid, query, vid


def _query(obj: Any, number: int, folder: Path) -> Query:
    """The Query of one parsed line; ValueError with the reason otherwise."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if all(k in obj for k in QVH_KEYS):
        query = obj["query"]
        if not isinstance(query, str) or not query.strip():
            raise ValueError("'query' must be a non-empty string")
        video = folder / video_file_name(str(obj["vid"]), ".mp4")
        official = {k: obj[k] for k in QVH_KEYS}
        return Query(obj["qid"], video, sentence_question(query), official)
    missing = [k for k in ("video", "question") if k not in obj]
    if missing:
        raise ValueError(f"missing {', '.join(map(repr, missing))} (a line holds video and question, "
                         "or QVHighlights' qid, query and vid)")
    if not isinstance(obj["video"], str) or not obj["video"].strip():
        raise ValueError("'video' must be a non-empty string (a path)")
    if not isinstance(obj["question"], str) or not obj["question"].strip():
        raise ValueError("'question' must be a non-empty string")
    return Query(obj.get("id", number), folder / obj["video"], obj["question"].strip())


def read_queries(path: str | Path, video_dir: str | Path | None = None) -> list[Query]:
    """Every line of a query file (blank lines skipped). Bad lines and repeated ids are one
    ValueError naming `file:line` and the reason of each (the first MAX_LISTED)."""
    path = Path(path)
    if (problem := not_a_file(path)) is not None:
        raise FileNotFoundError(f"queries={path}: {problem}")
    folder = Path(video_dir) if video_dir else path.parent
    queries: list[Query] = []
    problems: list[str] = []
    seen: dict[Any, int] = {}
    for number, where, obj in json_lines(path):  # a line that is not JSON (or not UTF-8) is a RecordError
        try:
            if isinstance(obj, RecordError):
                raise obj
            query = _query(obj, number, folder)
        except RecordError as err:
            problems.append(str(err))
            continue
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        key = json.dumps(query.id)  # 7 and "7" are two ids, as QVHighlights compares them
        if key in seen:
            problems.append(f"{where}: id {query.id!r} repeats line {seen[key]}")
            continue
        seen[key] = number
        queries.append(query)
    if problems:
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ValueError(f"{len(problems)} bad line(s) in {path}:\n  " + "\n  ".join(problems[:MAX_LISTED]) + more)
    if not queries:
        raise ValueError(f"queries={path}: no query in the file")
    return queries
