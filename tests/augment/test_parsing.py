"""Reply parsing, explicit seconds -> placeholders, and the validator's reject reasons."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from damo_lit.augment import llm, validate
from damo_lit.augment.items import GroundedItem, Moment, Video
from damo_lit.augment.llm import ReplyFormatError, parse_reply
from damo_lit.augment.text import has_literal_time, normalise_question, to_placeholders
from damo_lit.augment.validate import ValidationSettings, Validator

SPANS = ((3.2, 5.0), (10.0, 20.5))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It happens from 3.2 to 5.0 seconds.", "It happens {span:0}."),
        ("between 10s and 20.5s it goes on", "{span:1} it goes on"),
        ("At [3.2, 5.0].", "At {span:0}."),
        ("It starts at 10 seconds and ends at 20.5 s.", "It starts at {start:1} and ends at {end:1}."),
        ("3.25-5 s, then 10 to 20.4 seconds", "{span:0}, then {span:1}"),
        ("two men and 3 dogs", "two men and 3 dogs"),
        ("from 7 to 8 seconds", "from 7 to 8 seconds"),  # matches no span: left for the validator
    ],
)
def test_to_placeholders(text: str, expected: str) -> None:
    assert to_placeholders(text, SPANS) == expected


def test_literal_times_and_normalisation() -> None:
    assert has_literal_time("from 7 to 8 seconds") and has_literal_time("at 1:05")
    assert not has_literal_time("It happens {span:0}.") and not has_literal_time("3 dogs")
    assert normalise_question("When does:  'A man' RUN?") == normalise_question("when does a man run")


def test_parse_reply_shapes() -> None:
    items, malformed = parse_reply(
        'Sure!\n```json\n{"items": [{"type": "When", "question": "When?", "answer": "from 3.2 to 5 seconds",'
        ' "spans": [[3.2, 5.0]], "events": ["0"]}, {"type": "how", "question": "x"}]}\n```'
    )
    assert malformed == 1
    assert items == [GroundedItem("when", (("When?", "{span:0}"),), ((3.2, 5.0),), (0,))]
    (dialogue,), _ = parse_reply(
        '[{"type": "dialogue", "turns": [{"role": "user", "content": "First?"}, {"role": "assistant", "content":'
        ' "{span:0}"}, {"role": "user", "content": "Then?"}, {"role": "assistant", "content": "{span:1}"}],'
        ' "spans": [[1, 2], [3, 4]]}]'
    )
    assert dialogue.task == "dialogue" and dialogue.turns == (("First?", "{span:0}"), ("Then?", "{span:1}"))
    assert dialogue.about == ()
    for bad in ("I cannot do that.", '{"answer": 3}', "[1, 2"):
        with pytest.raises(ReplyFormatError):
            parse_reply(bad)


VIDEO = Video(
    "vid",
    "vid.mp4",
    30.0,
    (Moment(2.0, 8.0, ("a dog runs",), (0,)), Moment(10.0, 15.0, ("a cat sleeps",), (1,))),
)


def qa(qtype: str, answer: str, spans, about=(), question: str = "When?") -> GroundedItem:
    return GroundedItem(qtype, ((question, answer),), tuple(spans), tuple(about))


@pytest.mark.parametrize(
    "item, reason",
    [
        (qa("why", "{span:0}", [(2, 8)]), "unknown_type"),
        (qa("when", " ", [(2, 8)]), "empty_text"),
        (qa("when", "{span:0}", []), "no_spans"),
        (qa("when", "{span:0}", [(8, 2)]), "bad_span"),
        (qa("when", "{span:0}", [(25, 31)]), "outside_video"),
        (qa("when", "{span:0}", [(2, 8)], [5]), "bad_event_index"),
        (qa("when", "{span:0}", [(20, 25)]), "no_source_overlap"),
        (qa("when", "{span:0}", [(10, 15)], [0]), "no_source_overlap"),
        (qa("before", "{span:0}", [(10, 15), (2, 8)], [1, 0]), "wrong_order"),
        (qa("after", "{span:0}", [(2, 8), (10, 15)], [0, 1]), "wrong_order"),
        (qa("order", "{span:0}", [(2, 8)]), "wrong_order"),
        (qa("when", "{span:1}", [(2, 8)]), "bad_placeholder"),
        (qa("when", "Early on.", [(2, 8)]), "no_placeholder"),
        # a dialogue whose final answer (the one scored) refers to no span, though an earlier one does
        (GroundedItem("dialogue", (("When?", "{span:0}."), ("And then?", "Nothing much.")), ((2, 8),), (0,)),
         "no_placeholder"),
        (qa("when", "{span:0}, about 5 seconds in", [(2, 8)]), "literal_timestamp"),
    ],
)
def test_validator_rejects(item: GroundedItem, reason: str) -> None:
    validator = Validator(VIDEO, ValidationSettings(), "test", "activitynet")
    assert validator.check(item) == (None, reason)


def test_validator_accepts_and_drops_duplicates() -> None:
    validator = Validator(VIDEO, ValidationSettings(min_iou=0.5), "test", "activitynet")
    record, reason = validator.check(qa("after", "{span:0} after {span:1}", [(10, 15), (2.0, 8.03)], [1, 0]))
    assert reason is None
    assert record.spans == ((10.0, 15.0), (2.0, 8.03)) and record.task == "qa"
    assert record.meta == {"question_type": "after", "generator": "test", "source_format": "activitynet",
                           "source_video": "vid", "source_events": [[1], [0]]}
    # min_iou: overlapping but too loose a span is refused
    assert validator.check(qa("when", "{span:0}", [(2, 29)], [0], question="x?")) == (None, "no_source_overlap")
    lax = Validator(VIDEO, ValidationSettings(), "test", "activitynet")
    # an edge overshoot within tolerance is clipped; best-overlap source when none is given
    record, _ = lax.check(qa("when", "{span:0}", [(9.0, 30.04)], question="When does the cat sleep?"))
    assert record.spans == ((9.0, 30.0),) and record.meta["source_events"] == [[1]]
    assert record.id == "vid-aug000"
    assert lax.check(qa("when", "{span:0}", [(10, 15)], question="when does the CAT sleep")) == (None, "duplicate")


DOC = Path(__file__).resolve().parents[2] / "docs" / "augment.md"


def test_docs_list_every_reject_reason() -> None:
    """The reject table in docs/augment.md names every reason the validator and the LLM backends
    count, and no other: read from their source, so that a new reason cannot go undocumented."""
    produced = set(re.findall(r'return (?:None|\[\]), "(\w+)"', Path(validate.__file__).read_text()))
    produced |= set(re.findall(r'rejects\["(\w+)"\]', Path(llm.__file__).read_text()))
    assert {"unknown_type", "empty_text", "no_spans", "schema", "malformed_reply", "request_rejected"} <= produced
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("| reason |"):].split("\n\n")[0]
    documented = {name for row in table.splitlines()[2:] for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert documented == produced
