"""Questions about video files, as batches of the batch contract (damo-predict).

The video goes through the same decode path as training data and the question through the same
prompt encoding, so that a model answers it exactly as it answered its validation questions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from damo_lit.data.dataset import Collator
from damo_lit.data.decode import DecodedVideo, DecodeParams, DecodeError, decode_video
from damo_lit.data.prompts import encode

# The answer slot of the conversation; only the prompt before it is used.
_PLACEHOLDER_ANSWER = "."


def checked_question(question: str) -> str:
    """The question without surrounding blanks; an empty one is a ValueError."""
    question = question.strip()
    if not question:
        raise ValueError("question is empty: ask something about the video")
    return question


def question_item(video_key: str, sample_id: str, question: str, decoded: DecodedVideo, tokenizer: Any,
                  prompt_style: str = "plain") -> dict[str, Any]:
    """One sample of the batch contract asking `question` about a decoded video (the Collator
    stacks several into a batch)."""
    question = checked_question(question)
    encoded = encode((("user", question), ("assistant", _PLACEHOLDER_ANSWER)), tokenizer, prompt_style)
    return {
        "sample_id": sample_id,
        "video_key": video_key,
        "task": "qa",
        "modality": None,
        "duration": decoded.duration,
        "spans": [],
        "video": decoded,
        "input_ids": encoded.prompt_ids,
        "labels": [-100] * len(encoded.prompt_ids),
        "prompt_ids": encoded.prompt_ids,
        "answer_text": "",
        "question": question,
        "caption": None,
    }


def question_batch(video: str | Path, question: str, tokenizer: Any, params: DecodeParams,
                   prompt_style: str = "plain", decoded: DecodedVideo | None = None) -> dict[str, Any]:
    """A one-sample batch asking `question` about `video` (raises DecodeError for a bad file);
    `decoded`, when given, is the video already decoded with `params`."""
    question = checked_question(question)
    if decoded is None:
        decoded = decode_video(video, params)
    item = question_item(str(video), Path(video).stem, question, decoded, tokenizer, prompt_style)
    batch = Collator(tokenizer.pad_token_id)([item])
    assert batch is not None
    return batch


__all__ = ["DecodeError", "checked_question", "question_batch", "question_item"]
