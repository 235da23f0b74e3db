"""Timestamps as text: rendering the placeholders of annotation records, and parsing model output.

Two formats, chosen by the top-level config key `timestamps`:

- `seconds`: "from 3.2 to 5.0 seconds" (one decimal);
- `relative`: integers 0-99 of the duration, as VTimeLLM does: "from 16 to 25", where k stands
  for k / 99 of the duration (0 is the start of the video, 99 its end).

Records hold placeholders that refer to their spans: `{span:i}` renders the whole span
("from 16 to 25"), `{start:i}` and `{end:i}` one end ("16"; "3.2 seconds" in `seconds`, so that
the unit is right whatever the format).

`parse_spans` reads spans back from free model text, tolerating tokenizer spacing ("3 . 2",
"3. 2", "1 : 05"), reversed pairs and extra words; it never raises and returns [] on garbage.
Clock times ("1:05", "0:01:05.5") are seconds in `seconds` and no span in `relative`; minutes
("from 1 to 2 minutes") are turned into seconds in `seconds`; a number is never read out of the
middle of a clock time or a decimal, and a pair with a negative end ("from -3 to 5") is no span
rather than the span of its digits. A pair that starts at or after the video's end (in either
format) is no span rather than a zero-length one at the end.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from damo_lit.data.schema import PLACEHOLDER

FORMATS = ("relative", "seconds")
RELATIVE_MAX = 99

# A time: a number, or a clock time mm:ss / hh:mm:ss (seconds may carry decimals); a minus sign
# right before it is captured, so that "-3" is read as negative and not as 3.
_SIGN = r"([-−]?)"
_TIME = r"(\d+(?::\d{2}){0,2}(?:\.\d+)?)"
# "from 3.2 to 5.0", "3.2 - 5.0 seconds", "between 16 and 25", "16 to 25", "3.2 s to 5 s", "1:05 - 1:10".
# The look-behind and look-ahead keep a match from starting or ending inside a clock time or a decimal.
# A unit after a time: seconds, or minutes, which scale the time in `seconds` (one group each).
_UNIT = r"(?:\s*(?:(seconds?|secs?|s)|(minutes?|mins?))\b)?"
_PAIR = re.compile(
    r"(?<![\d.])(?<!\d:)" + _SIGN + _TIME + _UNIT
    + r"\s*(?:to|and|-|–|until|till|through)\s*(?:second\s+)?"
    + _SIGN + _TIME + r"(?!\d|:\d)" + _UNIT,
    re.IGNORECASE,
)
# "3 . 2", "3 .2" and "3. 2" (the tiny tokenizer decodes 3.2 as "3. 2"): a decimal; so "at 5. 2 dogs"
# reads 5.2 too, which no parser can tell from a decimal once a tokenizer spaces them alike.
_SPACED_DECIMAL = re.compile(r"(?<![\d.])(\d+)\s*\.\s*(\d+)(?![\d.])")
_SPACED_COLON = re.compile(r"(?<=\d)\s*:\s*(?=\d)")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"timestamps must be one of {', '.join(FORMATS)}, got {fmt!r} (config key `timestamps`)")
    return fmt


def to_relative(seconds: float, duration: float) -> int:
    """Seconds -> integer 0-99 of the duration."""
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    return int(min(RELATIVE_MAX, max(0, round(seconds / duration * RELATIVE_MAX))))


def from_relative(value: float, duration: float) -> float:
    """Integer 0-99 of the duration -> seconds."""
    return float(value) / RELATIVE_MAX * duration


def format_time(seconds: float, duration: float, fmt: str) -> str:
    """One time point as text: '16' (relative) or '3.2 seconds'."""
    if check_format(fmt) == "relative":
        return str(to_relative(seconds, duration))
    return f"{seconds:.1f} seconds"


def format_span(start: float, end: float, duration: float, fmt: str) -> str:
    """A span as text: 'from 16 to 25' (relative) or 'from 3.2 to 5.0 seconds'."""
    if check_format(fmt) == "relative":
        return f"from {to_relative(start, duration)} to {to_relative(end, duration)}"
    return f"from {start:.1f} to {end:.1f} seconds"


def render(text: str, spans: Sequence[tuple[float, float]], duration: float, fmt: str) -> str:
    """Replace {span:i} / {start:i} / {end:i} in `text` with timestamps of `spans[i]`."""
    check_format(fmt)

    def replace(match: re.Match[str]) -> str:
        kind, index = match.group(1), int(match.group(2))
        if index >= len(spans):
            raise ValueError(f"{match.group(0)} in {text!r} refers to span {index}, but there are {len(spans)}")
        start, end = spans[index]
        if kind == "span":
            return format_span(start, end, duration, fmt)
        return format_time(start if kind == "start" else end, duration, fmt)

    return PLACEHOLDER.sub(replace, text)


def referenced_spans(text: str) -> list[int]:
    """Indices of the spans a text's placeholders refer to, sorted, without repeats."""
    return sorted({int(m.group(2)) for m in PLACEHOLDER.finditer(text)})


def parse_spans(text: object, duration: float | None, fmt: str) -> list[tuple[float, float]]:
    """Spans in seconds found in free text, in order of appearance; [] when there are none.

    Tolerates tokenizer spacing around decimal points and colons, reversed pairs (swapped) and
    any words around the numbers. Clock times (1:05) are seconds in `seconds`; a pair with a
    negative end, or with a clock time in `relative`, is no span. Relative values need the
    duration and are clipped to 0-99; seconds are clipped to [0, duration] when a duration is
    given, and a pair that starts at or after the end of the video is no span at all. Never raises.
    """
    try:
        if not isinstance(text, str) or fmt not in FORMATS:
            return []
        if duration is not None and not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
            return []
        if fmt == "relative" and duration is None:
            return []
        cleaned = _SPACED_COLON.sub(":", _SPACED_DECIMAL.sub(r"\1.\2", text[:10000]))
        spans = (_span(match, duration, fmt) for match in _PAIR.finditer(cleaned))
        return [span for span in spans if span is not None]
    except Exception:  # a parser of model output must never take a run down
        return []


def clock_seconds(text: str) -> float | None:
    """Seconds from a number or a clock time `[[hh:]mm:]ss[.fff]` ("46", "1:05", "00:00:46.000");
    None when it is neither: more than three fields, a field that is no number, a negative field
    or minutes / seconds of 60 or more in a clock time, a value that is not finite. The one reading
    of a time for the span parser and for annotation columns (InternVid's clip bounds)."""
    parts = text.strip().split(":")
    if len(parts) > 3:
        return None
    try:
        values = [float(part) for part in parts]
    except ValueError:
        return None
    if len(values) > 1 and (any(v < 0 for v in values) or any(v >= 60 for v in values[1:])):
        return None
    total = 0.0
    for value in values:
        total = total * 60 + value
    return total if math.isfinite(total) else None


def _time_value(token: str, fmt: str) -> float | None:
    """A time token's value: a number, or a clock time's seconds (only in `seconds`: in
    `relative` the values are integers 0-99 and a clock time is no time)."""
    if ":" in token and fmt != "seconds":
        return None
    return clock_seconds(token)


def _span(match: re.Match[str], duration: float | None, fmt: str) -> tuple[float, float] | None:
    """One matched pair as a span in seconds, or None when it is no span (a negative end, an
    invalid time, or wholly after the video). In `seconds` a time in minutes ("1 to 2 minutes":
    the unit of the second time serves the first unless it has its own) becomes seconds."""
    sign_a, token_a, seconds_a, minutes_a, sign_b, token_b, _, minutes_b = match.groups()
    if sign_a or sign_b:  # a negative time is not a time: no span, rather than the span of its digits
        return None
    a, b = _time_value(token_a, fmt), _time_value(token_b, fmt)
    if a is None or b is None:
        return None
    if fmt == "seconds" and ":" not in token_a + token_b:
        a *= 60 if minutes_a or (minutes_b and not seconds_a) else 1
        b *= 60 if minutes_b else 1
    a, b = min(a, b), max(a, b)
    if fmt == "relative":
        assert duration is not None
        a, b = from_relative(min(a, RELATIVE_MAX), duration), from_relative(min(b, RELATIVE_MAX), duration)
    if duration is None:
        return a, b
    if a >= duration:  # wholly after the video: no span in it, not a zero-length one at its end
        return None
    return a, min(b, duration)
