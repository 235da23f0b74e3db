"""The values that flow through augmentation: a cleaned video, its moments, a generated item.

Source annotations are messy (windows past the end of the video, reversed or empty windows,
the same window described by several paraphrases). `Video` is what every backend sees after
cleaning: moments with unique windows inside the video, sorted by time, each with the
sentences that describe it. A backend returns `GroundedItem`s whose spans refer to moments by
index (`about`), so that validation can check every span against the window it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUESTION_TYPES = ("when", "before", "after", "duration", "order")
ITEM_TYPES = QUESTION_TYPES + ("dialogue",)

Span = tuple[float, float]


@dataclass(frozen=True)
class Moment:
    """One window of a video and every sentence that describes it (paraphrases share a window)."""

    start: float
    end: float
    sentences: tuple[str, ...]
    source_events: tuple[int, ...]  # indices of the source events merged into this window

    @property
    def span(self) -> Span:
        return (self.start, self.end)


@dataclass(frozen=True)
class Video:
    """A video ready for generation: its id, record path, duration and sorted moments."""

    video: str  # the source id (ActivityNet / Charades id, or a DaMO record's video path)
    path: str  # the `video` field the records will carry
    duration: float
    moments: tuple[Moment, ...]


@dataclass(frozen=True)
class QuestionSpec:
    """What to ask for, per video: the question kinds, how many, and the seed for sampling."""

    types: tuple[str, ...] = QUESTION_TYPES
    per_video: int = 8
    dialogues_per_video: int = 1
    dialogue_turns: int = 3
    seed: int = 0
    order_gap: float = 0.5  # seconds by which one start must lead another to call it "first"

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in QUESTION_TYPES]
        if unknown:
            raise ValueError(
                f"questions.types: unknown question type(s) {unknown}; expected a subset of {list(QUESTION_TYPES)}"
            )
        if self.per_video < 0 or self.dialogues_per_video < 0:
            raise ValueError("questions.per_video and questions.dialogues_per_video must be >= 0")
        if self.dialogue_turns < 2:
            raise ValueError(f"questions.dialogue_turns must be >= 2 (a dialogue has several turns), got {self.dialogue_turns}")


@dataclass(frozen=True)
class GroundedItem:
    """A generated QA pair (one turn) or dialogue (several turns) with the spans it refers to.

    `turns` holds (question, answer) pairs whose text refers to `spans` only through the
    {span:i} / {start:i} / {end:i} placeholders. `about[i]` is the index of the moment that
    spans[i] was taken from (None when the generator did not say; validation then matches it
    to the best-overlapping moment). For "before" / "after" items spans[0] is the event
    answered and spans[1] the event asked about; for "order" spans[0] is the earlier one.
    """

    qtype: str
    turns: tuple[tuple[str, str], ...]
    spans: tuple[Span, ...]
    about: tuple[int | None, ...] = field(default=())

    @property
    def task(self) -> str:
        return "dialogue" if len(self.turns) > 1 or self.qtype == "dialogue" else "qa"


def precedes(a: Span, b: Span, gap: float = 0.0) -> bool:
    """True when window a comes before window b: it starts at least `gap` earlier and ends no later."""
    return a[0] + gap <= b[0] and a[0] < b[0] and a[1] <= b[1]
