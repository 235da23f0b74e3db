"""damo-augment's command line: usage text and errors that say what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from damo_lit.cli.augment import main


def test_help_lists_formats_backends_and_outputs(capsys: pytest.CaptureFixture) -> None:
    main(["--help"])
    text = capsys.readouterr().out
    for word in ("input=", "format=activitynet", "charades_sta", "durations=", "backend=openai",
                 "backend=transformers", "summary.json", "progress.jsonl", "overwrite=true"):
        assert word in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["format=activitynet"], "missing input="),
        (["input=nowhere.json", "out=x.jsonl"], "input=nowhere.json: no such file"),
        (["input=a.json", "out=x.jsonl", "format=srt"], "format='srt' is not supported"),
        (["input", "out=x.jsonl"], "key=value"),
        (["backend=gemini"], "backend"),
        (["input=a.json", "out=x.jsonl", "questions.types=[when,why]"], "unknown question type"),
        (["input=a.json", "out=x.jsonl", "format=damo"], "not valid DaMO JSONL"),
        (["input=empty.json", "out=x.jsonl"], "holds no video with a usable event window"),
        (["input=a.json", "out=x.jsonl", "backend=openai", "backend.base_url=ftp://x"], "backend.base_url must be"),
    ],
)
def test_errors_name_the_key(args: list[str], message: str, anet_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(anet_file.parent)
    (anet_file.parent / "a.json").write_text(anet_file.read_text())
    (anet_file.parent / "empty.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert message in str(exit_info.value)


def test_console_script_runs(anet_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    script = Path(sys.executable).with_name("damo-augment")
    done = subprocess.run([str(script), f"input={anet_file}", f"out={out}", "progress=false"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert f"{len(lines)} records from 3 videos" in done.stderr
    assert "items per question type" in done.stderr and "source fixes" in done.stderr
    assert (tmp_path / "cli.jsonl.summary.json").exists()
