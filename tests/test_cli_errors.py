"""Mistakes a user can fix end in one line that names them, not in a traceback (cli.common.user_errors)."""

from __future__ import annotations

from typing import Callable

import pytest
from hydra.errors import ConfigCompositionException

from damo_lit.cli.cache import main as damo_cache
from damo_lit.cli.data import main as damo_data
from damo_lit.cli.eval import main as damo_eval
from damo_lit.cli.model import main as damo_model
from damo_lit.cli.predict import main as damo_predict


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        (damo_eval, [], "damo-eval: Missing mandatory value: ckpt"),
        (damo_eval, ["ckpt=/no/such/run"], "damo-eval: ckpt=/no/such/run: not a run folder or a .ckpt file"),
        (damo_eval, ["ckpt=x", "bogus.key=1"], "damo-eval: Could not override 'bogus.key'."),
        (damo_predict, ["ckpt=x", "video=/no/such.mp4", "question=when?"], "damo-predict: video=/no/such.mp4: no such file"),
        (damo_data, ["stats", "data=nope"], "damo-data stats: In 'data_stats': Could not find 'data/nope'"),
        (damo_model, ["summary", "model.bogus=1"], "damo-model summary: Could not override 'model.bogus'."),
        (damo_model, ["summary", "model.vision.chunk_size=-2"], "damo-model summary: model.vision.chunk_size: must be >= 0"),
        (damo_cache, ["data=nope"], "damo-cache: In 'cache': Could not find 'data/nope'"),
    ],
)
def test_user_mistakes_end_in_one_named_line(command: Callable, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command(argv)
    text = str(exit_info.value)
    assert text.startswith(message), text
    assert "Traceback" not in text and "full_key" not in text and "Config search path" not in text
    if "Could not find" in message:
        assert "Available options in 'data':" in text and "synthetic" in text  # what to type instead


def test_damo_traceback_shows_the_original_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAMO_TRACEBACK", "1")
    with pytest.raises(ConfigCompositionException, match="bogus.key"):
        damo_eval(["ckpt=x", "bogus.key=1"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_damo_predict_refuses_a_gpu_this_machine_lacks(tmp_path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: the accelerator is checked first")
    with pytest.raises(SystemExit, match=r"damo-predict: accelerator=gpu: this machine has no CUDA GPU"):
        damo_predict(["ckpt=x", f"video={video}", "question=when?", "accelerator=gpu"])


def test_inference_device_choices() -> None:
    import torch

    from damo_lit.cli.predict import inference_device

    assert inference_device("cpu") == torch.device("cpu")
    assert inference_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="accelerator=tpu: expected cpu, gpu, cuda or auto"):
        inference_device("tpu")
