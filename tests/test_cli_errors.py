"""Mistakes a user can fix end in one line that names them, not in a traceback (cli.common.user_errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
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
        (damo_eval, ["ckpt=/no/such/run"], "damo-eval: ckpt=/no/such/run: no such file or folder"),
        (damo_eval, ["ckpt=x", "bogus.key=1"], "damo-eval: Could not override 'bogus.key'."),
        (damo_predict, ["ckpt=x", "video=/no/such.mp4", "question=when?"], "damo-predict: video=/no/such.mp4: no such file"),
        (damo_predict, ["ckpt=x", "video=/tmp", "question=when?"], "damo-predict: video=/tmp: is a folder; expected a file"),
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ckpt=x", "tasks=[groundin]"], "damo-eval: tasks must be a non-empty list of caption, grounding, qa, dialogue, "
                                         "got ['groundin']"),
        (["ckpt=x", "limit=0"], "damo-eval: limit must be an integer >= 1 or null (every sample), got 0"),
        (["ckpt=x", "split=tset"], "damo-eval: split must be val or test, got 'tset'"),
        (["ckpt=x", "max_new_tokens=0"], "damo-eval: max_new_tokens=0: expected an integer >= 1"),
        (["ckpt=x", "batch_size=0"], "damo-eval: batch_size=0: expected an integer >= 1"),
    ],
)
def test_damo_eval_names_its_own_keys_as_typed(argv: list[str], message: str) -> None:
    """Not the datamodule keys they are passed on to (data.eval_tasks, data.max_samples_per_split)."""
    with pytest.raises(SystemExit) as exit_info:
        damo_eval(argv)
    assert str(exit_info.value) == message


def grounding_records(folder: Path, videos: int = 2) -> Path:
    """A DaMO JSONL folder (train, val, test) of grounding records on videos/<split>_<i>.mp4, which
    do not exist."""
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = [{"id": f"{split}-{i}", "video": f"videos/{split}_{i}.mp4", "duration": 8.0, "task": "grounding",
                 "spans": [[1.0, 3.0]], "turns": [{"role": "user", "content": "when is the red circle?"},
                                                  {"role": "assistant", "content": "{span:0}."}]}
                for i in range(videos)]  # fmt: skip
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_damo_cache_names_init_from_as_typed(tmp_path: Path) -> None:
    annotations = grounding_records(tmp_path / "annotations")
    with pytest.raises(SystemExit) as exit_info:
        damo_cache(["data=damo_jsonl", f"data.annotations={annotations}", "init_from=/no/such/stage",
                    f"out={tmp_path / 'cache'}"])  # fmt: skip
    assert str(exit_info.value).startswith("damo-cache: init_from=/no/such/stage: no weights.safetensors found")


TRAIN = ["stage=stage3_temporal", "model=damo_tiny", "logger=csv", "callbacks.progress_bar=null",
         "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.max_steps=1", "data.num_workers=0",
         "data.prepare_workers=1"]  # fmt: skip


def train_mistake(tmp_path: Path, *overrides: str) -> str:
    """damo-train's handler around an in-process run: the message it exits with."""
    from damo_lit.cli.common import compose_run
    from damo_lit.cli.train import run, train_errors

    cfg = compose_run("train", [*TRAIN, f"data.decoded_cache_dir={tmp_path / 'decoded'}", *overrides], tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info, train_errors():
        run(cfg)
    return str(exit_info.value)


def test_damo_train_mistakes_end_in_one_named_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "video": "a.mp4", "task": "grounding"}\nnot json\n')
    cases = {
        ("resume_from=/no/such.ckpt",): "damo-train: resume_from=/no/such.ckpt: no such file; expected a checkpoint",
        # Lightning's names: `last` and `best` would start from step 0 or blame ModelCheckpoint
        ("resume_from=last",): f"damo-train: resume_from=last: this run's folder holds no last checkpoint "
                               f"({tmp_path / 'run' / 'checkpoints' / 'last.ckpt'} does not exist)",
        ("resume_from=best",): "damo-train: resume_from=best: only the run that saved a checkpoint knows which was best",
        (f"resume_from={tmp_path}",): f"damo-train: resume_from={tmp_path} is a folder, not a checkpoint",
        ("data=damo_jsonl", "data.annotations=/no/such.txt"):
            "damo-train: source damo_jsonl: annotation file /no/such.txt not found (data.annotations)",
        ("data=damo_jsonl", f"data.annotations={bad}"):
            f"damo-train: 2 bad record(s) (set data.on_bad_record=drop to count and skip them):\n  {bad}:1: missing",
        ("data=damo_jsonl",): "damo-train: source damo_jsonl: data.annotations is required (a file path)",
        ("trainer.accumulate_grad_batches=0",): "damo-train: trainer.accumulate_grad_batches=0: expected an integer >= 1",
        ("+trainer.gradient_clip_algorithm=foo",): "damo-train: trainer: `gradient_clip_algorithm` foo is invalid",
    }
    if not torch.cuda.is_available():  # Lightning's own words, with the keys and the CPU recipes
        cases[("trainer.accelerator=gpu",)] = ("damo-train: trainer.accelerator=gpu trainer.devices=1: No supported gpu "
                                               "backend found! (trainer=gpu and trainer=fsdp need CUDA GPUs")
    kept = tmp_path / "run" / "error.txt"
    for overrides, message in cases.items():
        kept.unlink(missing_ok=True)
        text = train_mistake(tmp_path, *overrides)
        assert text.startswith(message), text
        assert text.endswith(f"\n(the traceback: {kept}; DAMO_TRACEBACK=1 shows it here)"), text
        assert "Traceback" not in text and "full_key" not in text
        assert kept.read_text().startswith("Traceback"), "the run folder keeps where it stopped"


def test_damo_train_lets_bugs_and_damo_traceback_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from damo_lit.cli.train import train_errors

    with pytest.raises(RuntimeError, match="a bug"), train_errors():
        raise RuntimeError("a bug")
    monkeypatch.setenv("DAMO_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError, match="resume_from="), train_errors():
        from damo_lit.cli.train import check_resume_from

        check_resume_from("/no/such.ckpt")


def damo_train(*args: str, multirun: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, "-m", "damo_lit.cli.train", *(["-m"] if multirun else []), *TRAIN, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_damo_train_refuses_a_split_without_videos_in_one_line(tmp_path: Path) -> None:
    """Every video missing (data.video_dir left to the annotation folder): no training on nothing,
    no weights written, and the message of the command line, not a traceback."""
    annotations = grounding_records(tmp_path / "annotations")
    done = damo_train("data=damo_jsonl", f"data.annotations={annotations}", f"hydra.run.dir={tmp_path / 'run'}",
                      f"data.decoded_cache_dir={tmp_path / 'decoded'}")  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-2:]
    assert last[0].startswith(f"damo-train: data damo_jsonl, split train ({annotations / 'train.jsonl'}): none of its "
                              f"2 video(s) exists (first missing: {annotations / 'videos' / 'train_0.mp4'})"), last
    kept = tmp_path / "run" / "error.txt"
    assert "data.video_dir=null" in last[0] and last[1] == f"(the traceback: {kept}; DAMO_TRACEBACK=1 shows it here)"
    assert "Traceback" in kept.read_text()
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "weights.safetensors").exists()


def test_damo_train_multirun_runs_every_job_and_names_the_mistake(tmp_path: Path) -> None:
    done = damo_train("data=damo_jsonl", "data.annotations=/no/such1.txt,/no/such2.txt",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", f"data.decoded_cache_dir={tmp_path / 'decoded'}",
                      multirun=True)  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "#1 : " in done.stdout + done.stderr, "the second job ran after the first failed"
    assert "damo-train: source damo_jsonl: annotation file /no/such1.txt not found (data.annotations)" in done.stderr
    assert "Traceback" not in done.stderr


def test_damo_predict_checks_max_new_tokens_before_building_anything() -> None:
    with pytest.raises(SystemExit, match=r"damo-predict: max_new_tokens=0: expected an integer >= 1"):
        damo_predict(["ckpt=/no/such/run", "video=x.mp4", "question=when?", "max_new_tokens=0"])
