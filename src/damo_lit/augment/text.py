"""Text helpers: sentence casing, question normalisation, and explicit seconds -> placeholders.

Answers must refer to spans only through {span:i} / {start:i} / {end:i}, so that training can
render them in seconds or relative format. An LLM often writes times out ("from 3.2 to 5.0
seconds"); `to_placeholders` rewrites those that match a span and reports any that remain.
"""

from __future__ import annotations

import re

from damo_lit.augment.items import Span

_NUM = r"(\d+(?:\.\d+)?)"
_UNIT = r"(?:s|sec|secs|second|seconds)\b"
# "from 3.2 to 5.0 seconds", "between 3.2s and 5s", "3.2-5.0 s", "[3.2, 5.0]", "(3.2 s - 5 s)"
_RANGE = re.compile(
    rf"(?:\b(?:from|between)\s+)?(?:[\[(]\s*)?\b{_NUM}(?:\s*{_UNIT})?\s*(?:-|–|—|,|\bto\b|\band\b|\buntil\b|\btill\b)\s*"
    rf"{_NUM}(?:\s*{_UNIT})?(?:\s*[\])])?",
    re.IGNORECASE,
)
_SINGLE = re.compile(rf"(?:\b(?:at|around|about)\s+)?{_NUM}\s*{_UNIT}", re.IGNORECASE)
_LITERAL_TIME = re.compile(rf"\d+(?:\.\d+)?\s*{_UNIT}|\b\d+:\d\d\b", re.IGNORECASE)
_OPENERS = frozenset(
    "a an the he she they it we you his her their its this that these those there then next "
    "after before finally later one two three four several some many another someone somebody "
    "person people man men woman women boy boys girl girls kid kids child children guy lady group "
    "camera we're they're".split()
)
_NOT_WORD = re.compile(r"[^0-9a-z]+")


def sentence_case(text: str) -> str:
    """Capitalise the first letter (for a sentence that starts an answer)."""
    return text[:1].upper() + text[1:] if text else text


def inline_case(text: str) -> str:
    """Lower-case the first letter when the first word is a common opener ("A man ..." -> "a man ..."),
    so that a sentence reads well inside a question; names and acronyms keep their case."""
    first = text.split(" ", 1)[0]
    return text[:1].lower() + text[1:] if first.lower() in _OPENERS else text


def normalise_question(text: str) -> str:
    """Lower-case, punctuation-free, single-spaced: two questions that differ only so are duplicates."""
    return _NOT_WORD.sub(" ", text.lower()).strip()


def has_literal_time(text: str) -> bool:
    """True when the text still states a time in seconds or as m:ss instead of a placeholder."""
    return _LITERAL_TIME.search(text) is not None


def to_placeholders(text: str, spans: tuple[Span, ...], tolerance: float = 0.25) -> str:
    """Replace explicit time ranges / points that match a span (within `tolerance` s) by placeholders.

    A range that matches spans[i] becomes "{span:i}" (the leading "from"/"between" is part of
    what the placeholder renders); a single "N seconds" matching a start or end becomes
    "{start:i}" / "{end:i}". Text that matches nothing is left as it is, for the validator.
    """

    def match_range(m: re.Match) -> str:
        a, b = float(m.group(1)), float(m.group(2))
        for i, (start, end) in enumerate(spans):
            if abs(a - start) <= tolerance and abs(b - end) <= tolerance:
                return "{span:%d}" % i
        return m.group(0)

    def match_single(m: re.Match) -> str:
        t = float(m.group(1))
        prefix = m.group(0)[: m.start(1) - m.start(0)]
        for i, (start, end) in enumerate(spans):
            if abs(t - start) <= tolerance:
                return prefix + "{start:%d}" % i
            if abs(t - end) <= tolerance:
                return prefix + "{end:%d}" % i
        return m.group(0)

    text = _RANGE.sub(match_range, text)
    return _SINGLE.sub(match_single, text)
