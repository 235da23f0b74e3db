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


def _synth(out, videos: int, *more: str) -> int:
    return main(["synth", "--out", str(out), "--videos", str(videos), "--seed", "1", "--workers", "1", *more])


def _listed_videos(out) -> set[str]:
    files = (out / "annotations").glob("*.jsonl")
    return {json.loads(line)["video"] for f in files for line in f.read_text().splitlines()}


def test_synth_refuses_a_folder_holding_another_set_unless_forced(tmp_path, capsys):
    out = tmp_path / "set"
    assert _synth(out, 4) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    # other parameters: refused, nothing touched (was: 4 MP4s left while the annotations listed 2)
    assert _synth(out, 2) == 1
    err = capsys.readouterr().err
    assert (f"damo-data synth: {out} already holds a synthetic set made with other parameters "
            "(videos: 4 there, 2 asked)") in err
    assert "--force" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # the same parameters (another number of workers): the set is there already, as data.generate treats it
    assert main(["synth", "--out", str(out), "--videos", "4", "--seed", "1", "--workers", "2"]) == 0
    assert "already holds this set" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # --force: the old videos/ and annotations/ go, nothing else in the folder does
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    (out / "extra" / "clip.mp4").write_bytes(b"mine too")
    assert _synth(out, 2, "--force") == 0
    assert "wrote 2 videos" in capsys.readouterr().out
    on_disk = {f"videos/{p.name}" for p in (out / "videos").glob("*.mp4")}
    assert on_disk == _listed_videos(out) and len(on_disk) == 2
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra" / "clip.mp4").read_bytes() == b"mine too"
    assert json.loads((out / "synth.json").read_text())["config"]["videos"] == 2


def test_synth_refuses_an_unfinished_set(tmp_path, capsys):
    out = tmp_path / "set"
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / "train.jsonl").write_text("{}\n")  # a run cut short: no synth.json
    assert _synth(out, 2) == 1
    assert "an unfinished or unknown set" in capsys.readouterr().err
    assert _synth(out, 2, "--force") == 0
    assert _listed_videos(out) == {f"videos/{p.name}" for p in (out / "videos").glob("*.mp4")}


def test_generate_removes_the_manifest_first(tmp_path, monkeypatch):
    """A generation cut short under an old synth.json must not look finished (is_generated)."""
    import damo_lit.data.synthetic as synthetic

    out = tmp_path / "set"
    synthetic.generate(out, synthetic.SynthConfig(videos=2, seed=1, workers=1))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_render_all", crash)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(out, synthetic.SynthConfig(videos=3, seed=1, workers=1))
    assert not synthetic.is_generated(out)


def test_validate_a_folder_or_an_empty_file_fails(tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.jsonl").write_text("")
    assert main(["validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    found = tmp_path / "annotations" / "train.jsonl"
    assert f"{tmp_path}: is a folder; expected a DaMO .jsonl file such as {found}" in err
    assert "file not found" not in err
    for text in ("", "\n\n  \n"):
        empty = tmp_path / "empty.jsonl"
        empty.write_text(text)
        assert main(["validate", str(empty)]) == 1
        captured = capsys.readouterr()
        assert f"{empty}: no records" in captured.err and "records OK" not in captured.out
