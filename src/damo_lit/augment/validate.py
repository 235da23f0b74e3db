"""Check every generated item against its video before it is written, and turn it into a Record.

An item is rejected, with a reason that the run's summary counts, when a timestamp lies
outside the video, a span does not overlap the moment it is about, a before/after/order answer
gets the order wrong, the text states times literally instead of through placeholders, a
placeholder points at no span, the question repeats one already asked about the same video,
or the record would not pass the DaMO schema.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from damo_lit.augment.items import ITEM_TYPES, GroundedItem, Span, Video, precedes
from damo_lit.augment.text import has_literal_time, normalise_question
from damo_lit.data.schema import PLACEHOLDER, Record, RecordError, Turn
from damo_lit.metrics.spans import temporal_iou


@dataclass(frozen=True)
class ValidationSettings:
    """How strict validation is. `min_iou` = 0 asks only for some overlap with the source moment."""

    min_iou: float = 0.0
    edge_tolerance: float = 0.05  # seconds a reply may overshoot 0 or the duration (then clipped)


class Validator:
    """Validates the items of one video, remembering its questions to drop duplicates."""

    def __init__(self, video: Video, settings: ValidationSettings, generator: str, source_format: str) -> None:
        self.video = video
        self.settings = settings
        self.generator = generator
        self.source_format = source_format
        self.seen: set[str] = set()
        self.accepted = 0

    def check(self, item: GroundedItem) -> tuple[Record | None, str | None]:
        """Return (record, None) for a valid item, or (None, reason) for a reject."""
        if item.qtype not in ITEM_TYPES:
            return None, "unknown_type"
        texts = [text for turn in item.turns for text in turn]
        if not item.turns or any(not isinstance(t, str) or not t.strip() for t in texts):
            return None, "empty_text"
        if not item.spans:
            return None, "no_spans"
        spans, reason = self._spans(item.spans)
        if reason:
            return None, reason
        about, reason = self._sources(spans, item.about)
        if reason:
            return None, reason
        if not self._order_holds(item.qtype, spans):
            return None, "wrong_order"
        indices = [int(m.group(2)) for t in texts for m in PLACEHOLDER.finditer(t)]
        if any(i >= len(spans) for i in indices):
            return None, "bad_placeholder"
        if not PLACEHOLDER.search(item.turns[-1][1]):  # the final answer is what stages 3 and 4 score
            return None, "no_placeholder"
        if any(has_literal_time(t) for t in texts):
            return None, "literal_timestamp"
        key = normalise_question(" | ".join(q for q, _ in item.turns))
        if key in self.seen:
            return None, "duplicate"
        record = self._record(item, spans, about)
        try:
            Record.from_dict(record.to_dict(), where=record.id)
        except RecordError:
            return None, "schema"
        self.seen.add(key)
        self.accepted += 1
        return record, None

    def _spans(self, raw: tuple[Span, ...]) -> tuple[list[Span], str | None]:
        duration, tol = self.video.duration, self.settings.edge_tolerance
        spans = []
        for span in raw:
            try:
                start, end = float(span[0]), float(span[1])
            except (TypeError, ValueError, IndexError):
                return [], "bad_span"
            if not (math.isfinite(start) and math.isfinite(end)) or end <= start:
                return [], "bad_span"
            if start < -tol or end > duration + tol:
                return [], "outside_video"
            start, end = round(max(0.0, start), 3), round(min(duration, end), 3)
            if end <= start:
                return [], "bad_span"
            spans.append((start, end))
        return spans, None

    def _sources(self, spans: list[Span], about: tuple[int | None, ...]) -> tuple[list[int], str | None]:
        """Resolve each span's source moment (best overlap when not given) and check the overlap."""
        moments = self.video.moments
        if about and len(about) != len(spans):
            return [], "bad_event_index"
        ious = temporal_iou(np.array(spans), np.array([m.span for m in moments]))  # (spans, moments)
        resolved = []
        for k in range(len(spans)):
            index = about[k] if about else None
            if index is None:
                index = int(ious[k].argmax())
            elif not isinstance(index, int) or not 0 <= index < len(moments):
                return [], "bad_event_index"
            if not ious[k, index] > 0 or ious[k, index] < self.settings.min_iou:
                return [], "no_source_overlap"
            resolved.append(index)
        return resolved, None

    @staticmethod
    def _order_holds(qtype: str, spans: list[Span]) -> bool:
        if qtype in ("before", "order"):
            return len(spans) >= 2 and precedes(spans[0], spans[1])
        if qtype == "after":
            return len(spans) >= 2 and precedes(spans[1], spans[0])
        return True

    def _record(self, item: GroundedItem, spans: list[Span], about: list[int]) -> Record:
        turns = []
        for question, answer in item.turns:
            turns += [Turn("user", question.strip()), Turn("assistant", answer.strip())]
        meta = {
            "question_type": item.qtype,
            "generator": self.generator,
            "source_format": self.source_format,
            "source_video": self.video.video,
            "source_events": [list(self.video.moments[i].source_events) for i in about],
        }
        return Record(
            id=f"{self.video.video}-aug{self.accepted:03d}",
            video=self.video.path,
            duration=self.video.duration,
            task=item.task,
            spans=tuple(spans),
            turns=tuple(turns),
            meta=meta,
        )
