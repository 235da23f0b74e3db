"""damo-augment's command line: usage text and errors that say what to fix."""

from __future__ import annotations

import json
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
        (["input=.", "out=x.jsonl"], "input=.: is a folder; expected a file"),
        (["input=a.json", "out=x.jsonl", "format=srt"], "format='srt' is not supported"),
        (["input", "out=x.jsonl"], "key=value"),
        (["backend=gemini"], "backend"),
        (["input=a.json", "out=x.jsonl", "questions.types=[when,why]"], "unknown question type"),
        (["input=a.json", "out=x.jsonl", "format=damo"], "not valid DaMO JSONL"),
        (["input=empty.json", "out=x.jsonl"], "holds no video with a usable event window"),
        (["input=a.json", "out=x.jsonl", "backend=openai", "backend.base_url=ftp://x"], "backend.base_url must be"),
        (["input=a.json", "out=."], "is a directory; expected the path of a JSONL file to write"),
        (["input=a.json", "out=a.json/x.jsonl"], "out=a.json/x.jsonl: its folder cannot be made"),
        (["input=a.json", "out=x.jsonl", "limit=-2"], "limit=-2: expected a whole number of videos >= 1"),
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


@pytest.mark.parametrize(
    "name, text, said",
    [
        ("charades_sta_test.txt", "AO8RW 0.0 6.9##a person is putting a book on a shelf.\n",
         "It looks like Charades-STA lines (VID start end##sentence): pass format=charades_sta durations="),
        ("train.jsonl", json.dumps({"id": "a", "video": "a.mp4", "duration": 5, "task": "caption",
                                    "caption": "x"}) + "\n" + json.dumps({"id": "b"}) + "\n",
         "It looks like DaMO JSONL: pass format=damo"),
        ("notes.md", "# notes\n", "not valid JSON"),
    ],
)
def test_input_of_another_format_names_the_formats(tmp_path: Path, name: str, text: str, said: str) -> None:
    # no format= given: the default (activitynet) cannot read the file, and the message says what to pass
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main([f"input={path}", f"out={tmp_path / 'x.jsonl'}", "progress=false"])
    message = str(exit_info.value)
    assert said in message
    assert "is not ActivityNet Captions JSON, which format=activitynet (the default) reads" in message
    assert "format= is one of activitynet (the default), charades_sta, damo" in message


def test_charades_file_read_as_damo_says_so(tmp_path: Path) -> None:
    path = tmp_path / "charades_sta_test.txt"
    path.write_text("AO8RW 0.0 6.9##a person is putting a book on a shelf.\n")
    with pytest.raises(SystemExit, match="not valid DaMO JSONL: .*pass format=charades_sta"):
        main([f"input={path}", "format=damo", f"out={tmp_path / 'x.jsonl'}", "progress=false"])


def test_a_run_that_writes_no_record_fails(tmp_path: Path) -> None:
    # one event per video: nothing comes before it, so no "before" question can be asked
    path = tmp_path / "one_event.json"
    path.write_text(json.dumps({"v1": {"duration": 10.0, "timestamps": [[1.0, 4.0]], "sentences": ["A dog barks."]}}))
    out = tmp_path / "none.jsonl"
    args = [f"input={path}", f"out={out}", "progress=false", "questions.types=[before]",
            "questions.dialogues_per_video=0"]
    for _ in range(2):  # the video is marked done: the same command again fails the same way
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        message = str(exit_info.value)
        assert f"no record written to {out}: no item was generated" in message and "overwrite=true" in message
    assert out.read_text() == ""
