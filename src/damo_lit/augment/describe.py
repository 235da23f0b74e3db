"""Event descriptions out of DaMO JSONL text: caption sentences and grounding questions.

A DaMO caption refers to its spans through placeholders ("first, a blue cross appears
{span:0}. then a red circle appears {span:1}."), and a grounding record asks about its span
("when does the blue cross appear?"). The template backend needs each event as a plain
clause ("a blue cross appears"), as ActivityNet and Charades-STA give them, to put it inside
its own questions and answers. These helpers turn the one into the other:

- `caption_events`: the sentences of a caption that refer to each span, placeholders removed
  (with the "from" / "at" that introduced them) and a leading "first," / "then" / "finally,"
  dropped, since those only order the paragraph's sentences;
- `question_description`: a grounding question that states its event word for word, without
  its scaffolding: "when does this happen: X?" -> X, "find the moment when X" -> X. Any other
  question ("when does the blue cross appear?", "what colour is the car?") gives None.
"""

from __future__ import annotations

import re

from damo_lit.augment.text import inline_case
from damo_lit.data.schema import PLACEHOLDER

# "from {start:0} to {end:0}", "between {start:0} and {end:0}" (the placeholders render "16" / "3.2 seconds")
_RANGE_PH = re.compile(rf"(?:\b(?:from|between)\s+)?\{{start:\d+\}}\s*(?:-|–|to|and|until|till)\s*\{{end:\d+\}}", re.I)
# "{start:0}" renders "16" or "3.2 seconds": the "at" / "until" before it goes with it; "{span:0}"
# renders "from 16 to 25" and takes no preposition ("walks in {span:0}": the "in" is the verb's)
_ONE_PH = re.compile(
    r"(?:\b(?:from|at|to|until|till|by|around|about|after|before|since|starting|ending)\s+)?\{(?:start|end):\d+\}"
    r"|\{span:\d+\}",
    re.I,
)
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;]?\s*\)|\[\s*[,;]?\s*\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]])")
_REPEATED_PUNCT = re.compile(r"([,;:])\s*(?=[,;:.!?])")
_DANGLING_END = re.compile(r"(?:[\s,;:]+|\s+(?:and|or|then|while|as)\b)+$", re.I)
_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# words that only order a paragraph's sentences ("first, ...", "then ...", "finally, ...")
_LEADING_CONNECTIVE = re.compile(
    r"^(?:and\s+)?(?:then|next|first|firstly|finally|lastly|later|afterwards?|after\s+(?:that|this)|"
    r"meanwhile|eventually|subsequently|at\s+first|at\s+last|in\s+the\s+end|at\s+the\s+end)\b(?!\s+(?:to|of)\b)"
    r"\s*,?\s+",
    re.I,
)


def strip_placeholders(text: str) -> str:
    """The text with every {span:i} / {start:i} / {end:i} removed, and the "from" / "at" /
    brackets / commas left around them, so that it reads as a sentence again; stray braces go too."""
    text = _RANGE_PH.sub("", text)
    text = _ONE_PH.sub("", text)
    text = text.replace("{", "").replace("}", "")
    text = _EMPTY_BRACKETS.sub("", text)
    text = _SPACES.sub(" ", text).strip()
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub("", text)
    text = text.lstrip(",;: ")
    end = re.search(r"[.!?]+$", text)
    final = end.group(0) if end else ""
    body = _DANGLING_END.sub("", text[: len(text) - len(final)])
    return (body + final).strip() if body else ""


def drop_leading_connective(text: str) -> str:
    """'first, a cross appears' -> 'a cross appears'; 'then he sits' -> 'he sits' (nothing else changes)."""
    rest = _LEADING_CONNECTIVE.sub("", text, count=1)
    return rest if rest.strip() else text


def _clause(sentence: str) -> str:
    """A caption sentence as an event clause: placeholders and ordering words gone, no final stop."""
    return drop_leading_connective(strip_placeholders(sentence)).rstrip(".!?; ").strip()


def caption_events(caption: str, n_spans: int) -> tuple[dict[int, str], list[int]]:
    """Span index -> the clause(s) of the caption that describe it; and the spans no sentence describes.

    Each sentence describes the spans its placeholders refer to (a sentence that is only a
    placeholder describes them together with the sentence before it). Two sentences about one
    span are joined with '; '. A caption without any placeholder describes its span only when it
    has exactly one; with several, none of them can be told apart.
    """
    refs = {int(m.group(2)) for m in PLACEHOLDER.finditer(caption)}
    if not refs:
        clause = _clause(caption)
        if n_spans == 1 and clause:
            return {0: clause}, []
        return {}, list(range(n_spans))
    described: dict[int, list[str]] = {}
    previous = ""
    for sentence in _SENTENCE_END.split(caption.strip()):
        clause = _clause(sentence)
        spans = sorted({int(m.group(2)) for m in PLACEHOLDER.finditer(sentence)})
        if not clause:  # "... appears. {span:0}." : the placeholder belongs to the sentence before
            clause = previous
        previous = clause or previous
        for i in spans:
            if clause and i < n_spans and clause not in described.setdefault(i, []):
                described[i].append(clause)
    events = {i: "; ".join([clauses[0], *map(inline_case, clauses[1:])]) for i, clauses in sorted(described.items())
              if clauses}
    return events, [i for i in range(n_spans) if i not in events]


# ---------------------------------------------------------------------------------------------
# grounding questions

_COLON_HEAD = re.compile(r"\b(?:when|time|moment|happens?|occurs?|takes? place|segment|part|locate|find|event)\b", re.I)
_QUESTION_WORDS = frozenset(
    "what which who whom whose where why how when is are was were do does did can could will would should "
    "may might has have had".split()
)
_WH_HEAD = re.compile(
    r"^(?:(?:and|so|now|then)\s*,?\s+)?(?:when|at what (?:time|point|moment)|at which (?:time|point|moment)|"
    r"(?:during|in) (?:what|which) (?:part|segment|portion|section|moment|interval)(?: of the (?:video|clip))?|"
    r"where in the (?:video|clip)|how long)\s+(?P<rest>.+)$",
    re.I,
)
_IMPERATIVE = re.compile(
    r"^(?:please\s+)?(?:find|locate|show(?:\s+me)?|identify|tell\s+me|point\s+out)\s+"
    r"(?:(?:the|a)\s+)?(?:(?:moment|segment|part|time|clip|interval|span|portion)s?\s+)?"
    r"(?:(?:in|of)\s+the\s+(?:video|clip)\s+)?(?:when|where|in\s+which|during\s+which)\s+(?P<rest>.+)$",
    re.I,
)
def question_description(question: str) -> str | None:
    """The event a grounding question states as a clause, or None when it states none.

    Two forms state it word for word: "when does this happen: X?" (the data sources' prompt for
    a query) and "find the moment when X". Text that is no question ("a man jumps into the
    pool", a query given as it is) is returned as it stands. A wh-question ("when does the blue
    cross appear?") gives None: turning it into a clause would mean guessing its grammar, and a
    wrong guess would be trained on; such a record's span is read from a caption of its video,
    or skipped and counted.
    """
    text = _SPACES.sub(" ", strip_placeholders(question)).strip().rstrip("?.! ").strip()
    if not text:
        return None
    head, colon, tail = text.partition(":")
    if colon and tail.strip() and _COLON_HEAD.search(head):  # "when does this happen: X?"
        return tail.strip()
    match = _IMPERATIVE.match(text)
    if match:
        return match.group("rest").strip()
    if question.strip().endswith("?") or _WH_HEAD.match(text) or text.split(" ", 1)[0].lower() in _QUESTION_WORDS:
        return None
    return text
