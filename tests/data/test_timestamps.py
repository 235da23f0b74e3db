"""Timestamp text: rendering placeholders, and parsing spans back from free model text."""

from __future__ import annotations

import random

import pytest

from damo_lit.data.timestamps import (
    clock_seconds,
    format_span,
    from_relative,
    parse_spans,
    referenced_spans,
    render,
    to_relative,
)


def test_render_both_formats():
    spans = [(3.2, 5.0), (0.0, 20.0)]
    text = "it sounds {span:0}; it starts at {start:1} and ends at {end:1}."
    assert render(text, spans, 20.0, "seconds") == (
        "it sounds from 3.2 to 5.0 seconds; it starts at 0.0 seconds and ends at 20.0 seconds."
    )
    assert render(text, spans, 20.0, "relative") == "it sounds from 16 to 25; it starts at 0 and ends at 99."
    assert referenced_spans("{span:1} then {start:0} and {end:1}") == [0, 1]
    with pytest.raises(ValueError, match="timestamps must be one of"):
        render(text, spans, 20.0, "frames")
    with pytest.raises(ValueError, match=r"\{span:2\}"):
        render("{span:2}", spans, 20.0, "seconds")


@pytest.mark.parametrize("fmt", ["relative", "seconds"])
def test_round_trip(fmt):
    rng = random.Random(0)
    for _ in range(2000):
        duration = rng.uniform(1.0, 200.0)
        start = rng.uniform(0, duration)
        end = rng.uniform(start, duration)
        text = f"it happens {format_span(start, end, duration, fmt)}."
        if (to_relative(start, duration) == 99) if fmt == "relative" else round(start, 1) >= duration:
            assert parse_spans(text, duration, fmt) == []  # written as starting at the video's end: no span
            continue
        (got,) = parse_spans(text, duration, fmt)
        tolerance = duration / 99 / 2 + 1e-6 if fmt == "relative" else 0.05 + 1e-6
        assert got[0] == pytest.approx(start, abs=tolerance) and got[1] == pytest.approx(end, abs=tolerance)


def test_relative_scale():
    assert to_relative(0.0, 30.0) == 0 and to_relative(30.0, 30.0) == 99 and to_relative(45.0, 30.0) == 99
    assert from_relative(99, 30.0) == 30.0 and from_relative(33, 30.0) == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("from 3 . 2 to 5 . 0 seconds", "seconds", [(3.2, 5.0)]),
        ("from 3. 2 to 5 .0 seconds.", "seconds", [(3.2, 5.0)]),
        ("it is heard from 5.0 to 3.2 seconds", "seconds", [(3.2, 5.0)]),  # reversed
        ("between 1 and 2.5 s, and again 7 - 9 seconds", "seconds", [(1.0, 2.5), (7.0, 9.0)]),
        ("from 10 to 45 seconds", "seconds", [(10.0, 20.0)]),  # clipped to the 20 s video
        ("from 30 to 45 seconds", "seconds", []),  # wholly after it: no span, not (20, 20)
        ("from 20 to 25 , or from 2 to 4 seconds", "seconds", [(2.0, 4.0)]),
        ("they occur from 0 to 99 .", "relative", [(0.0, 20.0)]),
        ("um , from 50 to 25 i think", "relative", [(20.0 * 25 / 99, 20.0 * 50 / 99)]),
        ("no numbers here", "seconds", []),
        ("from 16 to", "relative", []),
    ],
)
def test_parse_spans_tolerates_model_text(text, fmt, expected):
    assert_spans(parse_spans(text, 20.0, fmt), expected)


def assert_spans(got: list[tuple[float, float]], expected: list[tuple[float, float]]) -> None:
    assert len(got) == len(expected), f"got {got}, expected {expected}"
    for (a, b), (c, d) in zip(got, expected):
        assert a == pytest.approx(c, abs=1e-6) and b == pytest.approx(d, abs=1e-6), f"got {got}, expected {expected}"


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("from 1:05 to 1:10", "seconds", [(65.0, 70.0)]),  # was (1, 5): digits out of the clock
        ("00:03 - 00:07", "seconds", [(3.0, 7.0)]),  # was (0, 3)
        ("from 0:01:05.5 to 0:01:10 seconds", "seconds", [(65.5, 70.0)]),
        ("from 1 : 05 to 1 : 10", "seconds", [(65.0, 70.0)]),  # tokenizer spacing
        ("from 3-5 seconds", "seconds", [(3.0, 5.0)]),  # a hyphen between two times is still a range
        ("from -3 to 5", "seconds", []),  # was (3, 5): a negative time is no time
        ("from 2 to -5 seconds", "seconds", []),
        ("from -3 to 5 , then from 7 to 9", "seconds", [(7.0, 9.0)]),
        ("from 1:5 to 1:75", "seconds", []),  # not clock times: no span, not (1, 5) or (5, 75)
        ("from 1:05 to 1:10", "relative", []),  # a clock time is no relative value
        ("from -16 to 25", "relative", []),
        ("from 1:05 to 1:10 , or from 16 to 25", "relative", [(100.0 * 16 / 99, 100.0 * 25 / 99)]),
        ("from 3 to 5: then it stops", "seconds", [(3.0, 5.0)]),  # a colon that ends a clause is no clock
        ("at time:3 to 5", "seconds", [(3.0, 5.0)]),
        ("from 3 to 5:3", "seconds", []),  # half a clock time is none
        ("from 0.5 to 1.5 minutes", "seconds", [(30.0, 90.0)]),  # the unit of the end serves both
        ("from 1 minute to 1.5 mins", "seconds", [(60.0, 90.0)]),
        ("from 30 seconds to 1 minute", "seconds", [(30.0, 60.0)]),  # unless the start has its own
        ("from 3 s to 5 min", "seconds", [(3.0, 100.0)]),  # clipped to the video
        ("from 16 to 25 minutes", "relative", [(100.0 * 16 / 99, 100.0 * 25 / 99)]),  # no unit in relative
        ("from 99 to 120", "relative", []),  # starts at the video's end, as "from 100 to 120 seconds" does
        ("from 90 to 120", "relative", [(100.0 * 90 / 99, 100.0)]),
    ],
)
def test_parse_spans_reads_clock_times_and_rejects_negative_ones(text, fmt, expected):
    assert_spans(parse_spans(text, 100.0, fmt), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("46", 46.0),
        (" 3.5 ", 3.5),
        ("-3", -3.0),  # a plain number keeps its sign: the caller decides what a negative bound means
        ("1:05", 65.0),
        ("00:00:46.000", 46.0),
        ("1:02:03.5", 3723.5),
        ("1:75", None),  # seconds of 60 or more
        ("1:60:00", None),  # minutes of 60 or more
        ("-1:05", None),  # a negative clock field
        ("1:2:3:4", None),  # more than hh:mm:ss
        ("1:xx", None),
        ("", None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_clock_seconds_reads_numbers_and_clock_times(text, expected):
    assert clock_seconds(text) == expected


def test_parse_spans_survives_garbage():
    rng = random.Random(1)
    alphabet = list("0123456789 .,-–:;sS\n\t{}()") + ["from ", " to ", " and ", "seconds", "99", "1e309", "nan", "é"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        for fmt in ("relative", "seconds"):
            spans = parse_spans(text, rng.choice([None, 0.0, -3.0, float("nan"), 12.5]), fmt)
            assert isinstance(spans, list)
            for start, end in spans:
                assert 0 <= start <= end
    for bad in (None, 3, b"from 1 to 2", ["from 1 to 2"]):
        assert parse_spans(bad, 10.0, "seconds") == []
    assert parse_spans("from 1 to 2", 10.0, "frames") == []
    assert parse_spans("from 1 to 2", None, "relative") == []  # relative needs the duration
    assert parse_spans("from 1 to 2", None, "seconds") == [(1.0, 2.0)]
