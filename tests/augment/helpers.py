"""Checks shared by the augmentation tests: read an output file back through the schema."""

from __future__ import annotations

from pathlib import Path

from damo_lit.augment.items import precedes
from damo_lit.data.schema import PLACEHOLDER, Record, RecordError, read_jsonl


def read_valid(path: Path) -> list[Record]:
    """Every line of `path` as a Record; fails the test on any schema error."""
    records = []
    for lineno, rec in read_jsonl(path):
        assert not isinstance(rec, RecordError), f"line {lineno}: {rec}"
        records.append(rec)
    return records


def check_grounding(records: list[Record], clean: dict[str, dict[int, tuple[float, float]]]) -> None:
    """Timestamps inside the video, spans equal to their (cleaned) source windows, order right."""
    assert records
    for rec in records:
        assert rec.task in ("qa", "dialogue")
        assert rec.meta["generator"] and rec.meta["question_type"]
        for start, end in rec.spans:
            assert 0 <= start < end <= rec.duration, rec
        windows = clean[rec.meta["source_video"]]
        for span, events in zip(rec.spans, rec.meta["source_events"]):
            for event in events:
                assert windows[event] == span, (rec.id, span, windows[event])
        qtype = rec.meta["question_type"]
        if qtype in ("before", "order"):
            assert precedes(rec.spans[0], rec.spans[1]), rec
        if qtype == "after":
            assert precedes(rec.spans[1], rec.spans[0]), rec
        answers = [t.content for t in rec.turns if t.role == "assistant"]
        assert any(PLACEHOLDER.search(a) for a in answers), rec
        for turn in rec.turns:
            for number in ("seconds", " sec "):
                assert number not in turn.content, turn
