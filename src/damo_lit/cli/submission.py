"""damo-eval's QVHighlights output: its answers as an official moment-retrieval submission.

The Moment-DETR evaluator (and the benchmark's server) reads one JSON object per query:
`{"qid", "query", "vid", "pred_relevant_windows": [[start, end, score], ...]}`, best first. A
DaMO answer states its windows in order; the first gets score 1, the next 1/2, and so on. An
answer with no window that parses still needs one (the evaluator reads every query's first
window): it gets [0, 0, 0], a window of no length that overlaps nothing, i.e. a miss, which
is what damo-lit's own grounding figures count it as.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

SUBMISSION = "qvhighlights_submission.jsonl"
NO_WINDOW = [0.0, 0.0, 0.0]


def submission_windows(spans: Sequence[Sequence[float]]) -> list[list[float]]:
    """[[start, end, score], ...] from an answer's spans (seconds, in the order stated)."""
    if not spans:
        return [list(NO_WINDOW)]
    return [[round(float(s), 4), round(float(e), 4), round(1.0 / (rank + 1), 4)] for rank, (s, e) in enumerate(spans)]


def submission_line(official: Mapping[str, Any], spans: Sequence[Sequence[float]]) -> dict[str, Any]:
    """One submission object: the query's official qid, query and vid, and the answer's windows."""
    return {**{k: official[k] for k in ("qid", "query", "vid")}, "pred_relevant_windows": submission_windows(spans)}


def qvhighlights_submission(rows: Iterable[Mapping[str, Any]], samples: Iterable[Any]) -> list[dict[str, Any]]:
    """The submission lines of the prediction `rows` whose records came from a QVHighlights file
    (their `meta` keeps the official qid, with its type, query and vid); other rows are left out."""
    official = {s.record.id: s.record.meta for s in samples if {"qid", "query", "vid"} <= set(s.record.meta)}
    lines = []
    for row in rows:
        meta = official.get(row["id"])
        if meta is None or row.get("padding"):
            continue
        lines.append(submission_line(meta, row["pred_spans"]))
    return lines
