"""What a user types as free text on the command line reaches the command as typed: damo-predict's
question and video path are literal words, outside Hydra's override grammar."""

from __future__ import annotations

from pathlib import Path

import pytest

from damo_lit.cli.predict import main as damo_predict
from damo_lit.cli.predict import split_words

QUESTIONS = [
    "when does the dog bark, and why?",  # Hydra: "Ambiguous value ... quote the value"
    "when's the first bark?",  # Hydra: LexerNoViableAltException
    "when does the (first) bark start?",
    'when does the "dog" bark?',
    "is a = b here?",
    "what is ${oops} and [1, 2]?",  # no interpolation, no list
    "",  # empty: damo-predict's own error, not Hydra's
]


@pytest.mark.parametrize("question", QUESTIONS)
def test_question_and_video_words_are_taken_literally(question: str) -> None:
    literal, overrides = split_words(["ckpt=outputs/x", f"question={question}", "video=/tmp/my clip (1).mp4",
                                      "accelerator=cpu", "+max_new_tokens=3"])  # fmt: skip
    assert literal == {"question": question, "video": "/tmp/my clip (1).mp4"}
    assert overrides == ["ckpt=outputs/x", "accelerator=cpu", "+max_new_tokens=3"]  # the rest stays Hydra's


def test_everything_after_the_first_equals_sign_is_the_value() -> None:
    assert split_words(["question=a = b == c", "++video=x=y.mp4"])[0] == {"question": "a = b == c", "video": "x=y.mp4"}


@pytest.mark.parametrize("question", QUESTIONS[:-1])
def test_damo_predict_gets_past_the_command_line_with_any_question(tmp_path: Path, question: str) -> None:
    """End to end up to the first thing a model would need: the (missing) video, named as typed."""
    video = tmp_path / "my clip (1).mp4"
    with pytest.raises(SystemExit) as info:
        damo_predict(["ckpt=x", f"video={video}", f"question={question}", "accelerator=cpu"])
    assert str(info.value).startswith(f"damo-predict: video={video}: no such file"), info.value


def test_damo_predict_help_says_the_words_are_literal(capsys: pytest.CaptureFixture) -> None:
    damo_predict(["--help"])
    out = capsys.readouterr().out
    assert "taken literally" in out and "everything after the first '='" in out and "Hydra override" in out


def test_missing_question_is_still_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="damo-predict: missing question=: give video=PATH and question=TEXT"):
        damo_predict(["ckpt=x", f"video={tmp_path / 'a.mp4'}"])
