"""From a record to token ids: the conversation, the prompt style, and labels masked to the answers.

A record becomes a conversation of rendered (role, content) turns; a caption record with no
turns becomes "user: describe the video. assistant: CAPTION". Two prompt styles:

- `plain` (the tiny model): `<s> user: Q <video> assistant: A </s> user: Q2 assistant: A2 </s>`.
  The video follows the first question, so that a causal LM reads each frame token already
  knowing what is asked (with the video first, a random-init LM stayed at the constant-span
  baseline for 400 steps even on perfect per-frame features; question first, it learned).
- `chat` (real models): the tokenizer's own `apply_chat_template`, with `<video>` opening the
  first user message.

Exactly one `<video>` token per sequence. Labels are -100 everywhere except the assistant
answers and the end-of-turn token after each (every assistant turn of a dialogue is learned);
`prompt_ids` stops right before the final answer, ready for `generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from damo_lit.data.schema import VIDEO_TOKEN, Record
from damo_lit.data.timestamps import render

CAPTION_PROMPT = "describe the video."
PROMPT_STYLES = ("plain", "chat")
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Conversation:
    """A record's rendered turns, plus what the batch reports about it."""

    turns: tuple[tuple[str, str], ...]  # (role, content), user first, alternating, ends with assistant
    answer_text: str  # the final assistant turn
    caption: str | None  # the rendered caption of a caption record
    spans: tuple[tuple[float, float], ...]  # the spans the final answer refers to (seconds)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one sample, unpadded."""

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]


def conversation(record: Record, fmt: str) -> Conversation:
    """Render a record's placeholders in timestamp format `fmt` and shape it as a conversation."""
    caption = render(record.caption, record.spans, record.duration, fmt) if record.caption is not None else None
    if record.turns:
        turns = tuple((t.role, render(t.content, record.spans, record.duration, fmt)) for t in record.turns)
    elif caption is not None:
        turns = (("user", CAPTION_PROMPT), ("assistant", caption))
    else:
        raise ValueError(f"record {record.id} has neither turns nor a caption: nothing to learn from")
    if turns[-1][0] != "assistant":
        raise ValueError(f"record {record.id}: the last turn must be the assistant's answer")
    return Conversation(turns, turns[-1][1], caption, record.answer_spans)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def video_token_id(tokenizer: Any) -> int:
    """The id of `<video>`, which must be a single special token of the tokenizer."""
    token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no {VIDEO_TOKEN} token: add it as a special token "
            "(tokenizer.add_special_tokens({'additional_special_tokens': ['<video>']}))"
        )
    return int(token_id)


def encode_plain(turns: Sequence[tuple[str, str]], tokenizer: Any) -> Encoded:
    """`<s> user: Q <video> assistant: A </s> ...`, labels on each answer and its `</s>`."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the plain prompt style needs a tokenizer with an eos token")
    ids: list[int] = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    labels = [IGNORE_INDEX] * len(ids)
    prompt_ids: list[int] = []
    last_answer = max(i for i, (role, _) in enumerate(turns) if role == "assistant")
    video = [video_token_id(tokenizer)]
    for i, (role, content) in enumerate(turns):
        if role == "user":
            piece = _ids(tokenizer, f"user: {content}") + video + _ids(tokenizer, "assistant:")
            video = []
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
        else:
            if i == last_answer:
                prompt_ids = list(ids)
            piece = _ids(tokenizer, content) + [int(tokenizer.eos_token_id)]
            ids += piece
            labels += piece
    return Encoded(ids, labels, prompt_ids)


def encode_chat(turns: Sequence[tuple[str, str]], tokenizer: Any) -> Encoded:
    """The tokenizer's chat template, cut at each assistant turn so that labels cover the answers.

    The text of the conversation up to turn k must extend the text up to turn k - 1 (true of
    ordinary chat templates); each piece between two cuts is tokenised on its own.
    """
    messages = [{"role": role, "content": content} for role, content in turns]
    messages[0] = {"role": "user", "content": f"{VIDEO_TOKEN}\n{messages[0]['content']}"}
    ids: list[int] = []
    labels: list[int] = []
    prompt_ids: list[int] = []
    done = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError(
                "the tokenizer's chat template does not extend the text turn by turn; "
                "use data.prompt_style=plain or a template that does"
            )
        context = _ids(tokenizer, prefix[len(done) :])
        answer = _ids(tokenizer, full[len(prefix) :])
        ids += context
        labels += [IGNORE_INDEX] * len(context)
        prompt_ids = list(ids)
        ids += answer
        labels += answer
        done = full
    return Encoded(ids, labels, prompt_ids)


def encode(turns: Sequence[tuple[str, str]], tokenizer: Any, style: str) -> Encoded:
    """Token ids of a conversation in prompt style `style`; checks the single `<video>` token."""
    if style == "plain":
        encoded = encode_plain(turns, tokenizer)
    elif style == "chat":
        encoded = encode_chat(turns, tokenizer)
    else:
        raise ValueError(f"data.prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    video_id = video_token_id(tokenizer)
    count = encoded.input_ids.count(video_id)
    if count != 1:
        raise ValueError(f"a sequence must hold exactly one {VIDEO_TOKEN} token, this one holds {count}: {turns!r}")
    return encoded
