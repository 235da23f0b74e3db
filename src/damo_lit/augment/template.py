"""The deterministic template backend: grounded QA and dialogues built from the events directly.

It is the offline default and a baseline for LLM generation: every answer is true by
construction (a "when" answer is the source window itself, a "before" answer is the moment
that immediately precedes the one asked about), and the phrasing varies through a RNG seeded
by (seed, video), so that a run, a rerun and a resumed run give the same items.
"""

from __future__ import annotations

import random
from damo_lit.augment.backend import Backend, Generation
from damo_lit.augment.items import GroundedItem, Moment, QuestionSpec, Video, precedes
from damo_lit.augment.text import inline_case, sentence_case

QUESTIONS: dict[str, tuple[str, ...]] = {
    "when": (
        "When does this happen: {x}?",
        "At what time in the video does the following take place: {x}?",
        "During which part of the video does this occur: {x}?",
        "Find the moment in the video when {x}.",
        "Locate the segment where {x}.",
        "When can we see that {x}?",
    ),
    "before": (
        "What happens just before this: {x}?",
        "What takes place right before {x}?",
        "Which event comes immediately before this one: {x}?",
        "Before {x}, what is going on?",
    ),
    "after": (
        "What happens right after this: {x}?",
        "What takes place next, after {x}?",
        "Which event follows this one: {x}?",
        "After {x}, what happens?",
    ),
    "duration": (
        "How long does this last: {x}?",
        "For how long does the following go on: {x}?",
        "What is the duration of this event: {x}?",
        "How long is the part where {x}?",
    ),
    "order": (
        "Which comes first: {x}, or {y}?",
        "Which of these happens earlier in the video, {x}, or {y}?",
        "In what order do these happen: {x}; {y}?",
        "Does {x} happen before or after {y}?",
    ),
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "when": (
        "It happens {span:0}.",
        "This takes place {span:0}.",
        "{X}, {span:0}.",
        "From {start:0} to {end:0}.",
        "It starts at {start:0} and ends at {end:0}.",
    ),
    "before": (
        "Just before that, {y}, {span:0}; the event you asked about follows {span:1}.",
        "{Y} ({span:0}), right before it ({span:1}).",
        "Before it, {y}. That happens {span:0}, and the event you mention {span:1}.",
    ),
    "after": (
        "Right after that, {y}, {span:0}; the event you asked about happens {span:1}.",
        "Next, {y} ({span:0}), after the event you mention ({span:1}).",
        "After it, {y}. That happens {span:0}, following the event you mention ({span:1}).",
    ),
    "duration": (
        "It lasts from {start:0} to {end:0}.",
        "It goes on {span:0}.",
        "It starts at {start:0} and ends at {end:0}.",
    ),
    "order": (
        "{X} comes first ({span:0}), then {y} ({span:1}).",
        "First {x}, {span:0}; after that {y}, {span:1}.",
        "{X} happens earlier, {span:0}; {y} follows {span:1}.",
    ),
}
DIALOGUE_NEXT: tuple[str, ...] = ("What happens after that?", "And then?", "What comes next?", "What follows?")
DIALOGUE_NEXT_ANSWER: tuple[str, ...] = (
    "Next, {y}, {span:%d}.",
    "Then {y} ({span:%d}).",
    "After that, {y}, {span:%d}.",
)
DIALOGUE_LAST: tuple[str, ...] = ("How long does that last?", "And how long does it go on?")
DIALOGUE_LAST_ANSWER: tuple[str, ...] = ("It lasts from {start:%d} to {end:%d}.", "It goes on {span:%d}.")


def _fill(template: str, x: str = "", y: str = "") -> str:
    """Put event sentences into a template, keeping the {span:i} placeholders as they are."""
    return (
        template.replace("{X}", sentence_case(x))
        .replace("{x}", inline_case(x))
        .replace("{Y}", sentence_case(y))
        .replace("{y}", inline_case(y))
    )


class TemplateBackend(Backend):
    """Deterministic QA and dialogues from the event windows (no model, no network)."""

    def __init__(self, concurrency: int = 1) -> None:
        self.generator = "template"
        self.concurrency = max(1, int(concurrency))

    def generate(self, video: Video, spec: QuestionSpec) -> Generation:
        rng = random.Random(f"{spec.seed}|{video.video}")
        moments = video.moments
        pools: dict[str, list] = {t: self._candidates(t, moments, spec.order_gap) for t in spec.types}
        items: list[GroundedItem] = []
        types = [t for t in spec.types if pools[t]]
        rng.shuffle(types)
        while len(items) < spec.per_video and types:
            for qtype in list(types):
                if len(items) >= spec.per_video:
                    break
                pool = pools[qtype]
                if not pool:
                    types.remove(qtype)
                    continue
                candidate = pool.pop(rng.randrange(len(pool)))
                items.append(self._item(qtype, candidate, moments, rng))
        for _ in range(spec.dialogues_per_video):
            dialogue = self._dialogue(moments, spec, rng)
            if dialogue is not None:
                items.append(dialogue)
        return Generation(items=items)

    @staticmethod
    def _candidates(qtype: str, moments: tuple[Moment, ...], gap: float) -> list[tuple[int, ...]]:
        """Index tuples a question of this type can be asked about (anchor first)."""
        n = len(moments)
        if qtype in ("when", "duration"):
            return [(i,) for i in range(n)]
        if qtype == "before":
            out = []
            for i in range(n):
                earlier = [j for j in range(n) if precedes(moments[j].span, moments[i].span, gap)]
                if earlier:  # the nearest one: the latest start among those that come before
                    out.append((i, max(earlier, key=lambda j: (moments[j].start, moments[j].end))))
            return out
        if qtype == "after":
            out = []
            for i in range(n):
                later = [j for j in range(n) if precedes(moments[i].span, moments[j].span, gap)]
                if later:
                    out.append((i, min(later, key=lambda j: (moments[j].start, moments[j].end))))
            return out
        return [(i, j) for i in range(n) for j in range(n) if precedes(moments[i].span, moments[j].span, gap)]

    @staticmethod
    def _item(qtype: str, idx: tuple[int, ...], moments: tuple[Moment, ...], rng: random.Random) -> GroundedItem:
        def say(i: int) -> str:
            return rng.choice(moments[i].sentences)

        question_t, answer_t = rng.choice(QUESTIONS[qtype]), rng.choice(ANSWERS[qtype])
        if qtype in ("when", "duration"):
            (i,) = idx
            x = say(i)
            return GroundedItem(qtype, ((_fill(question_t, x), _fill(answer_t, x)),), (moments[i].span,), (i,))
        if qtype in ("before", "after"):
            anchor, answer = idx
            x, y = say(anchor), say(answer)
            turn = (_fill(question_t, x), _fill(answer_t, x, y))
            return GroundedItem(qtype, (turn,), (moments[answer].span, moments[anchor].span), (answer, anchor))
        first, second = idx
        a, b = say(first), say(second)
        asked = (a, b) if rng.random() < 0.5 else (b, a)
        turn = (_fill(question_t, *asked), _fill(answer_t, a, b))
        return GroundedItem("order", (turn,), (moments[first].span, moments[second].span), (first, second))

    @staticmethod
    def _dialogue(moments: tuple[Moment, ...], spec: QuestionSpec, rng: random.Random) -> GroundedItem | None:
        """A chain through the video: when is X, what comes next (repeatedly), how long is the last."""
        n = len(moments)
        nxt: dict[int, int] = {}
        for i in range(n):
            later = [j for j in range(n) if precedes(moments[i].span, moments[j].span, spec.order_gap)]
            if later:
                nxt[i] = min(later, key=lambda j: (moments[j].start, moments[j].end))
        if not nxt:
            return None
        chain = [rng.choice(sorted(nxt))]
        while len(chain) < spec.dialogue_turns - 1 and chain[-1] in nxt:
            chain.append(nxt[chain[-1]])
        x = rng.choice(moments[chain[0]].sentences)
        turns = [(_fill(rng.choice(QUESTIONS["when"]), x), _fill(rng.choice(ANSWERS["when"]), x))]
        for k in range(1, len(chain)):
            y = rng.choice(moments[chain[k]].sentences)
            turns.append((rng.choice(DIALOGUE_NEXT), _fill(rng.choice(DIALOGUE_NEXT_ANSWER) % k, y=y)))
        last = len(chain) - 1
        template = rng.choice(DIALOGUE_LAST_ANSWER)
        turns.append((rng.choice(DIALOGUE_LAST), template % ((last, last) if template.count("%d") == 2 else last)))
        return GroundedItem("dialogue", tuple(turns), tuple(moments[i].span for i in chain), tuple(chain))
