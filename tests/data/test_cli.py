"""damo-data: synth, validate (file:line of every bad record), stats (last line is JSON)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from damo_lit.cli.data import main


def test_validate_names_every_bad_line(tmp_path, synth_dir, capsys):
    good = synth_dir / "annotations" / "val.jsonl"
    assert main(["validate", str(good)]) == 0
    assert capsys.readouterr().out.strip().endswith("records OK")
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    broken = json.loads(lines[1])
    broken["spans"] = [[5.0, 2.0]]
    lines[1] = json.dumps(broken)
    lines[3] = "{not json"
    bad.write_bytes(("\n".join(lines[:5]) + "\n").encode() + b'{"id": "caf\xe9"}\n' + ("\n".join(lines[5:]) + "\n").encode())
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2: spans[0] is reversed" in err
    assert f"{bad}:4: not valid JSON" in err
    assert f"{bad}:6: not UTF-8 text (byte 0xe9 at byte 12)" in err  # a Latin-1 line: named, not a crash
    assert "3 bad record(s)" in err


def test_stats_charades_sta(shared_data, capsys):
    code = main([
        "stats", "data=charades_sta",
        f"data.annotations={shared_data / 'charades_sta' / 'charades_sta_test.txt'}",
        f"data.durations={shared_data / 'charades_sta' / 'Charades_v1_test.csv'}",
    ])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    stats = json.loads(out[-1])
    assert stats["samples"] == 3720 and stats["videos"] == 1334
    assert stats["videos_missing"] == 1334  # no Charades videos here
    assert stats["fixes"]["window_end_clipped"] == 562 and stats["fixes"]["record_malformed_dropped"] == 0
    assert any("window_end_clipped 562" in line for line in out[:-1])


def test_stats_synthetic_and_errors(synth_dir, capsys):
    assert main(["stats", f"data.root={synth_dir}"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["videos"] == 20 and stats["videos_missing"] == 0
    assert stats["splits"]["train"]["videos"] == 16 and stats["tasks"]["caption"] == 20
    assert main(["stats", "data=qvhighlights", "data.annotations=/nonexistent/q.jsonl"]) == 1
    assert "/nonexistent/q.jsonl not found" in capsys.readouterr().err


def test_synth_command_and_help(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--videos", "2", "--seed", "1", "--workers", "1"]) == 0
    assert "wrote 2 videos" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "videos").glob("*.mp4")) == ["train_000000.mp4", "train_000001.mp4"]
    assert main(["synth", "--out", str(tmp_path), "--videos", "0"]) == 2
    for args in (["--help"], ["synth", "--help"], ["stats", "--help"], ["validate", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 0
    text = capsys.readouterr().out
    assert "damo-data stats data=charades_sta" in text and "--min-seconds" in text and "videos_missing" in text


def test_console_script_exit_code(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"id": "a"}\n')
    proc = subprocess.run([sys.executable, "-m", "damo_lit.cli.data", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1 and f"{bad}:1: missing required key 'video'" in proc.stderr
