"""Timestamps as text: rendering the placeholders of annotation records, and parsing model output.

Two formats, chosen by the top-level config key `timestamps`:

- `seconds`: "from 3.2 to 5.0 seconds" (one decimal);
- `relative`: integers 0-99 of the duration, as VTimeLLM does: "from 16 to 25", where k stands
  for k / 99 of the duration (0 is the start of the video, 99 its end).

Records hold placeholders that refer to their spans: `{span:i}` renders the whole span
("from 16 to 25"), `{start:i}` and `{end:i}` one end ("16"; "3.2 seconds" in `seconds`, so that
the unit is right whatever the format).

`parse_spans` reads spans back from free model text, tolerating tokenizer spacing ("3 . 2",
"3. 2"), reversed pairs and extra words; it never raises and returns [] on garbage.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from damo_lit.data.schema import PLACEHOLDER

FORMATS = ("relative", "seconds")
RELATIVE_MAX = 99

_NUMBER = r"(\d+(?:\.\d+)?)"
# "from 3.2 to 5.0", "3.2 - 5.0 seconds", "between 16 and 25", "16 to 25", "3.2 s to 5 s"
_PAIR = re.compile(
    _NUMBER + r"\s*(?:seconds?|secs?|s)?\s*(?:to|and|-|–|until|till|through)\s*(?:second\s+)?" + _NUMBER,
    re.IGNORECASE,
)
_SPACED_DECIMAL = re.compile(r"(?<![\d.])(\d+)\s*\.\s*(\d+)(?![\d.])")


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

    Tolerates tokenizer spacing around decimal points, reversed pairs (swapped) and any words
    around the numbers. Relative values need the duration and are clipped to 0-99; seconds are
    clipped to [0, duration] when a duration is given, and a pair that starts at or after the
    end of the video is no span at all. Never raises.
    """
    try:
        if not isinstance(text, str) or fmt not in FORMATS:
            return []
        if duration is not None and not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
            return []
        if fmt == "relative" and duration is None:
            return []
        cleaned = _SPACED_DECIMAL.sub(r"\1.\2", text[:10000])
        spans: list[tuple[float, float]] = []
        for match in _PAIR.finditer(cleaned):
            a, b = float(match.group(1)), float(match.group(2))
            if not (math.isfinite(a) and math.isfinite(b)):
                continue
            if a > b:
                a, b = b, a
            if fmt == "relative":
                assert duration is not None
                a = from_relative(min(a, RELATIVE_MAX), duration)
                b = from_relative(min(b, RELATIVE_MAX), duration)
            elif duration is not None:
                if a >= duration:  # wholly after the video: no span in it, not a zero-length one at its end
                    continue
                b = min(b, duration)
            spans.append((a, b))
        return spans
    except Exception:  # a parser of model output must never take a run down
        return []
