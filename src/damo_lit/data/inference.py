"""One question about one video file, as a batch of the batch contract (damo-predict).

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


def question_batch(video: str | Path, question: str, tokenizer: Any, params: DecodeParams,
                   prompt_style: str = "plain", decoded: DecodedVideo | None = None) -> dict[str, Any]:
    """A one-sample batch asking `question` about `video` (raises DecodeError for a bad file);
    `decoded`, when given, is the video already decoded with `params`."""
    question = checked_question(question)
    if decoded is None:
        decoded = decode_video(video, params)
    encoded = encode((("user", question), ("assistant", _PLACEHOLDER_ANSWER)), tokenizer, prompt_style)
    item = {
        "sample_id": Path(video).stem,
        "video_key": str(video),
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
    batch = Collator(tokenizer.pad_token_id)([item])
    assert batch is not None
    return batch


__all__ = ["DecodeError", "checked_question", "question_batch"]
