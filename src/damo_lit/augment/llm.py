"""What the LLM backends share: the prompt, the reply parser, caching and bounded re-asking.

The prompt lists the video's moments with their windows in seconds and asks for a JSON list
of items (type, question, answer, spans, events). Answers should use the placeholders; times
written out in seconds that match a span are converted, others make the item a reject. A
reply whose text is not a JSON list is asked again (a bounded number of times, each attempt
cached under its own key) and then counted as a reject. A reply is cached as it came, before
it is read, so that a rerun re-asks nothing the model already answered, however badly. A
failure of the endpoint itself (it is down, or answers with something that is not a reply at
all) is not the model's fault: the video is left undone, to be tried again by the next run.
"""

from __future__ import annotations

import json
import re
import threading
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

from damo_lit.augment.backend import Backend, Generation
from damo_lit.augment.cache import ReplyCache, cache_key
from damo_lit.augment.items import ITEM_TYPES, GroundedItem, QuestionSpec, Video
from damo_lit.augment.text import to_placeholders

Message = dict[str, str]

SYSTEM_PROMPT = (
    "You write training data for a video language model that must say when things happen. "
    "From a video's timestamped event descriptions you write questions and answers grounded in "
    "time. You use only the events given and reply with JSON only."
)
TYPE_HELP = {
    "when": "when (when does an event happen)",
    "before": "before (what happens just before an event)",
    "after": "after (what happens right after an event)",
    "duration": "duration (how long an event lasts)",
    "order": "order (which of two events comes first)",
}
EXAMPLE = (
    '[{"type": "when", "question": "When does the man open the door?", '
    '"answer": "He opens it {span:0}.", "spans": [[3.0, 7.5]], "events": [1]},\n'
    ' {"type": "before", "question": "What happens before he opens the door?", '
    '"answer": "He knocks {span:0}, just before opening it {span:1}.", '
    '"spans": [[0.5, 3.0], [3.0, 7.5]], "events": [0, 1]},\n'
    ' {"type": "dialogue", "turns": [{"question": "What does the man do first?", '
    '"answer": "He knocks on the door {span:0}."}, {"question": "And then?", '
    '"answer": "He opens it {span:1}."}], "spans": [[0.5, 3.0], [3.0, 7.5]], "events": [0, 1]}]'
)
_FENCE = re.compile(r"```(?:json)?", re.IGNORECASE)


class ReplyFormatError(ValueError):
    """A reply whose text holds no JSON list of items: the model's fault, so it is asked again and
    then counted as a reject (`malformed_reply`). A body that is no reply at all is a TransientFailure."""


class TransientFailure(RuntimeError):
    """The endpoint kept failing (408 / 429 / 5xx, a broken connection, a body that is not a
    chat-completions response) through all retries, or the run was interrupted: nothing was
    learnt about the video, so it is not marked done and the next run tries it again."""


class RequestRejected(RuntimeError):
    """The endpoint refused this one request (e.g. 400, prompt too long): reject the video's reply."""


def build_messages(video: Video, spec: QuestionSpec) -> list[Message]:
    """The chat messages that ask for one video's items."""
    lines = [f"Video duration: {video.duration:.1f} seconds.", "Events (index, start-end in seconds, description):"]
    for i, moment in enumerate(video.moments):
        lines.append(f"[{i}] {moment.start:.1f}-{moment.end:.1f}: " + " / ".join(moment.sentences))
    kinds = ", ".join(TYPE_HELP[t] for t in spec.types)
    lines += ["", f"Write up to {spec.per_video} question-answer items of these types: {kinds}."]
    if spec.dialogues_per_video:
        lines.append(
            f"Also write {spec.dialogues_per_video} item(s) of type dialogue: about {spec.dialogue_turns} "
            "question-answer turns that walk through the video in time."
        )
    lines += [
        "Rules:",
        "- Use only the events above and their windows; do not invent events or times.",
        '- Every item gives "spans", the [start, end] windows in seconds it refers to, and "events", '
        "the index of the event each span comes from.",
        "- For before and after: spans[0] is the event in the answer, spans[1] the event asked about. "
        "For order: spans[0] is the event that comes first.",
        '- In the text write times only as placeholders: {span:i} for the window spans[i] (it reads as '
        '"from S to E"), {start:i} and {end:i} for its ends. Never write numbers of seconds.',
        "- Every answer refers to at least one span.",
        "Reply with a JSON list only, like this:",
        EXAMPLE,
    ]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


def _json_payload(text: str) -> Any:
    """The first JSON list (or object) in a reply, past any prose or code fences."""
    cleaned = _FENCE.sub("", text)
    decoder = json.JSONDecoder()
    for opener in ("[", "{"):
        pos = cleaned.find(opener)
        while pos != -1:
            try:
                value, _ = decoder.raw_decode(cleaned, pos)
                return value
            except json.JSONDecodeError:
                pos = cleaned.find(opener, pos + 1)
    raise ReplyFormatError("no JSON list in the reply")


def _turns(obj: dict) -> tuple[tuple[str, str], ...] | None:
    if isinstance(obj.get("turns"), list):
        raw = obj["turns"]
        if raw and all(isinstance(t, dict) and "role" in t for t in raw):  # chat-style turns
            users = [t.get("content") for t in raw if t.get("role") == "user"]
            bots = [t.get("content") for t in raw if t.get("role") == "assistant"]
            pairs = list(zip(users, bots))
        else:
            pairs = [(t.get("question"), t.get("answer")) for t in raw if isinstance(t, dict)]
    else:
        pairs = [(obj.get("question"), obj.get("answer"))]
    if not pairs or any(not isinstance(q, str) or not isinstance(a, str) for q, a in pairs):
        return None
    return tuple((q.strip(), a.strip()) for q, a in pairs)


def parse_item(obj: Any, tolerance: float = 0.25) -> GroundedItem | None:
    """One reply item as a GroundedItem (explicit seconds turned into placeholders), or None if malformed."""
    if not isinstance(obj, dict):
        return None
    qtype = str(obj.get("type", "")).strip().lower()
    turns = _turns(obj)
    raw_spans = obj.get("spans")
    if qtype not in ITEM_TYPES or turns is None or not isinstance(raw_spans, list) or not raw_spans:
        return None
    try:
        spans = tuple((float(s[0]), float(s[1])) for s in raw_spans)
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    about: tuple[int | None, ...] = ()
    events = obj.get("events")
    if isinstance(events, list) and len(events) == len(spans):
        about = tuple(int(e) if isinstance(e, (int, float)) or (isinstance(e, str) and e.isdigit()) else None for e in events)
    turns = tuple((to_placeholders(q, spans, tolerance), to_placeholders(a, spans, tolerance)) for q, a in turns)
    return GroundedItem(qtype, turns, spans, about)


def parse_reply(text: str, tolerance: float = 0.25) -> tuple[list[GroundedItem], int]:
    """(items, number of malformed items) from a reply; ReplyFormatError when it holds no list."""
    payload = _json_payload(text)
    if isinstance(payload, dict):
        payload = payload.get("items", payload.get("questions"))
    if not isinstance(payload, list):
        raise ReplyFormatError("the reply's JSON is not a list of items")
    items, malformed = [], 0
    for obj in payload:
        item = parse_item(obj, tolerance)
        if item is None:
            malformed += 1
        else:
            items.append(item)
    return items, malformed


@dataclass(frozen=True)
class Completion:
    """One reply from the model, and whether it came from the cache."""

    raw: str  # as the backend received it; `LLMBackend.reply_text` reads the text out of it
    cached: bool


class LLMBackend(Backend):
    """A backend that asks a chat model; subclasses only say how one request is sent."""

    kind = "llm"

    def __init__(
        self,
        model: str,
        params: dict[str, Any],
        cache_dir: str | None = None,
        max_parse_retries: int = 2,
        concurrency: int = 1,
        tolerance: float = 0.25,
    ) -> None:
        if not model:
            raise ValueError("backend.model must name a model")
        self.model = str(model)
        self.params = {k: v for k, v in params.items() if v is not None}
        self.cache = ReplyCache(cache_dir)
        self.max_parse_retries = max(0, int(max_parse_retries))
        self.concurrency = max(1, int(concurrency))
        self.tolerance = float(tolerance)
        self.generator = f"{self.kind}:{self.model}"
        self.endpoint: str | None = None  # a server's URL (set by HTTP backends); None for a local model
        # set by stop(): waits before a retry end at once, and no new request is sent
        self.stopping = threading.Event()
        self.sleep: Callable[[float], object] = self.stopping.wait  # tests replace it to record the waits

    def start(self) -> None:
        """Before any request: a cache_dir that cannot hold replies fails here, in one line."""
        self.cache.prepare()
        self.stopping.clear()

    def stop(self) -> None:
        self.stopping.set()

    def _check_stopped(self) -> None:
        if self.stopping.is_set():
            raise TransientFailure("the run was interrupted before this video was done")

    def pause(self, seconds: float) -> None:
        """Wait before a retry; a stop() ends the wait at once (TransientFailure), so that worker
        threads do not keep an interrupted process alive for a long backoff or Retry-After."""
        self.sleep(seconds)
        self._check_stopped()

    def identity(self) -> dict[str, Any]:
        """What decides the replies besides the model's name, for the cache key and the resume
        fingerprint: two servers that serve the same model name (a fine-tune, another
        quantisation) must not share replies or outputs. Here the endpoint; local models say more."""
        return {"endpoint": self.endpoint} if self.endpoint else {}

    def fingerprint(self) -> dict:
        """What decides the written items: the replies, and how they are read (re-asks, time matching)."""
        return {"generator": self.generator, "params": self.params, **self.identity(),
                "max_parse_retries": self.max_parse_retries, "tolerance": self.tolerance}

    @abstractmethod
    def _complete(self, messages: list[Message], attempt: int, gen: Generation) -> str:
        """Send the request and return the raw reply, to be cached as it is (raise
        TransientFailure / RequestRejected / BackendError as the case may be). Every request
        sent, a retry too, is counted with `gen.sent()`, so that the summary shows what was paid."""

    def reply_text(self, raw: str) -> str:
        """The model's text in a raw reply (ReplyFormatError when there is none); the raw reply is the text here."""
        return raw

    def complete(self, messages: list[Message], attempt: int, gen: Generation) -> Completion:
        """The raw reply for (messages, attempt), from the cache when it is there."""
        parts: dict[str, Any] = {"kind": self.kind, "model": self.model, "messages": messages, "params": self.params,
                                 **self.identity()}
        if attempt:
            parts["attempt"] = attempt
        key = cache_key(**parts)
        cached = self.cache.get(key)
        if cached is not None:
            return Completion(cached, True)
        self._check_stopped()
        raw = self._complete(messages, attempt, gen)
        self.cache.put(key, raw, model=self.model, attempt=attempt, **self.identity())
        return Completion(raw, False)

    def generate(self, video: Video, spec: QuestionSpec) -> Generation:
        gen = Generation()
        messages = build_messages(video, spec)
        for attempt in range(self.max_parse_retries + 1):
            try:
                reply = self.complete(messages, attempt, gen)
            except TransientFailure as err:
                gen.complete, gen.error = False, str(err)
                return gen
            except RequestRejected as err:
                gen.rejects["request_rejected"] += 1
                gen.error = str(err)
                return gen
            gen.cache_hits += reply.cached
            try:
                items, malformed = parse_reply(self.reply_text(reply.raw), self.tolerance)
            except ReplyFormatError:
                continue
            if malformed:
                gen.rejects["malformed_item"] += malformed
            gen.items = self._within_quota(items, spec, gen)
            return gen
        gen.rejects["malformed_reply"] += 1
        return gen

    @staticmethod
    def _within_quota(items: list[GroundedItem], spec: QuestionSpec, gen: Generation) -> list[GroundedItem]:
        """Keep the requested types, at most per_video QA items and dialogues_per_video dialogues."""
        kept, qa, dialogues = [], 0, 0
        for item in items:
            if item.qtype != "dialogue" and item.qtype not in spec.types:
                gen.rejects["type_not_requested"] += 1
            elif item.qtype == "dialogue" and dialogues >= spec.dialogues_per_video:
                gen.rejects["over_quota"] += 1
            elif item.qtype != "dialogue" and qa >= spec.per_video:
                gen.rejects["over_quota"] += 1
            else:
                kept.append(item)
                dialogues += item.qtype == "dialogue"
                qa += item.qtype != "dialogue"
        return kept
