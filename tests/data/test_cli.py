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


def test_stats_counts_a_file_that_several_splits_read_once(shared_data, tmp_path, capsys):
    """data.splits.train set, val and test fall back to the same `annotations`: each split says what it
    reads, the totals count that file once (they counted it once per split)."""
    sta = shared_data / "charades_sta" / "charades_sta_test.txt"
    csv = shared_data / "charades_sta" / "Charades_v1_test.csv"
    assert main(["stats", "data=charades_sta", f"data.splits.train={sta}", f"data.annotations={sta}",
                 f"data.durations={csv}"]) == 0  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    stats = json.loads(out[-1])
    assert stats["samples"] == 3720 and stats["videos"] == 1334 and stats["fixes"]["window_end_clipped"] == 562
    assert stats["tasks"] == {"grounding": 3720} and stats["sources"] == {"charades_sta": 3720}
    assert stats["splits"] == {
        "train": {"samples": 3720, "videos": 1334},
        "val": {"samples": 3720, "videos": 1334, "shares_file_with": ["train"]},
        "test": {"samples": 3720, "videos": 1334, "shares_file_with": ["train"]},
    }
    assert "    val: 3720 samples over 1334 videos (shares a file with train: counted once in the totals)" in out
    train = tmp_path / "train.txt"
    train.write_text("AAA 1 5##sits.\nAAA 26 40##stands.\n")
    (tmp_path / "meta.csv").write_text("id,length\nAAA,30.0\n")
    assert main(["stats", "data=charades_sta", f"data.splits.train={train}", f"data.annotations={sta}",
                 f"data.durations=[{csv},{tmp_path / 'meta.csv'}]"]) == 0  # fmt: skip
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["samples"] == 2 + 3720 and stats["fixes"]["window_end_clipped"] == 1 + 562
    assert stats["splits"]["train"] == {"samples": 2, "videos": 1}
    assert stats["splits"]["test"] == {"samples": 3720, "videos": 1334, "shares_file_with": ["val"]}


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "FILE"], "damo-data synth: --out FILE is a file; expected a folder"),
        (["--out", "FILE/sub"], "damo-data synth: --out FILE/sub: FILE is a file"),
        (["--seed", "-1"], "damo-data synth: seed must be >= 0"),
        (["--min-seconds", "nan"], "damo-data synth: min_seconds must be a finite number, got nan"),
        (["--max-seconds", "inf"], "damo-data synth: max_seconds must be a finite number, got inf"),
        (["--size", "9"], "damo-data synth: size must be even (H.264 video in yuv420p has even sides), got 9"),
        (["--min-seconds", "8.1", "--max-seconds", "8.2"], "damo-data synth: min_seconds (8.1) to max_seconds (8.2) "
                                                           "holds no whole number of 0.25 s steps"),
    ],
)
def test_synth_bad_arguments_end_in_one_line(tmp_path, capsys, args, message):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    args = [a.replace("FILE", str(afile)) for a in args]
    full = ["synth", "--videos", "2", "--workers", "1", *args]
    assert main(full if "--out" in args else [*full, "--out", str(tmp_path / "set")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.replace("FILE", str(afile))) and len(err.strip().splitlines()) == 1
    assert afile.read_text() == "mine" and not (tmp_path / "set").exists()


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


def test_synth_renders_again_the_videos_missing_from_a_set(tmp_path, capsys):
    """A complete set one of whose videos was deleted is not 'already there': the missing video is
    named and rendered again (the same file); a video its faults leave missing stays missing."""
    out = tmp_path / "set"
    assert _synth(out, 10, "--faults", "0.5") == 0
    capsys.readouterr()
    planted = [v for v, kind in json.loads((out / "synth.json").read_text())["faults"].items() if kind == "missing"]
    assert planted and not any((out / v).exists() for v in planted)
    deleted = sorted(f"videos/{p.name}" for p in (out / "videos").glob("*.mp4"))[:2]
    before = {video: (out / video).read_bytes() for video in deleted}
    for video in deleted:
        (out / video).unlink()
    assert _synth(out, 10, "--faults", "0.5") == 0
    said = capsys.readouterr().out
    assert f"already holds this set (10 videos, seed 1); 2 of its videos were missing ({', '.join(deleted)})" in said
    assert "rendered them again" in said
    assert {video: (out / video).read_bytes() for video in deleted} == before  # the same plans, the same files
    assert not any((out / v).exists() for v in planted)
    assert _synth(out, 10, "--faults", "0.5") == 0
    assert "nothing written" in capsys.readouterr().out


def test_synth_refuses_an_unfinished_set(tmp_path, capsys):
    out = tmp_path / "set"
    (out / "annotations").mkdir(parents=True)
    (out / "annotations" / "train.jsonl").write_text("{}\n")  # a run cut short: no synth.json
    assert _synth(out, 2) == 1
    assert "an unfinished or unknown set" in capsys.readouterr().err
    assert _synth(out, 2, "--force") == 0
    assert _listed_videos(out) == {f"videos/{p.name}" for p in (out / "videos").glob("*.mp4")}


def test_synth_says_when_a_split_is_left_empty(tmp_path, capsys):
    assert _synth(tmp_path / "two", 2) == 0
    assert "--videos 2 leaves the val and test split(s) empty" in capsys.readouterr().err
    assert _synth(tmp_path / "six", 6) == 0
    assert "empty" not in capsys.readouterr().err


def _files(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_an_interrupted_synth_continues_where_it_stopped(tmp_path, capsys, monkeypatch):
    """Ctrl-C mid-render exits 130 with how far it got; the same command renders only the rest and
    the set is byte for byte the one an uninterrupted run makes; other parameters are refused."""
    import damo_lit.data.synthetic as synthetic

    fresh = tmp_path / "fresh"
    assert _synth(fresh, 10, "--faults", "0.2") == 0
    out = tmp_path / "set"
    real_render, rendered = synthetic.render_plan, []

    def render_then_interrupt(plan, out_dir):
        if len(rendered) == 4:
            raise KeyboardInterrupt
        rendered.append(plan.video)
        return real_render(plan, out_dir)

    monkeypatch.setattr(synthetic, "render_plan", render_then_interrupt)
    capsys.readouterr()
    assert _synth(out, 10, "--faults", "0.2") == 130
    said = capsys.readouterr()
    assert "interrupted with 4 of 10 videos rendered" in said.err and "the same command continues" in said.err
    assert "rendering 10 videos" in said.err and not said.out, "progress and notes on stderr, results on stdout"
    assert not synthetic.is_generated(out) and (out / "synth.partial.json").is_file()
    assert _synth(out, 12, "--faults", "0.2") == 1  # another set: refused, as any unfinished one
    assert "an unfinished set of other parameters" in capsys.readouterr().err
    first = [v for v in rendered if "missing" not in v]
    rendered.clear()
    monkeypatch.setattr(synthetic, "render_plan", lambda plan, out_dir: rendered.append(plan.video) or real_render(plan, out_dir))
    assert _synth(out, 10, "--faults", "0.2") == 0
    assert "continuing the unfinished set" in capsys.readouterr().out
    sound = {v for v, kind in json.loads((out / "synth.json").read_text())["faults"].items() if kind != "no_audio"}
    assert not set(rendered) & (set(first) - sound)  # what was rendered is kept
    assert len(rendered) < 10
    assert _files(out) == _files(fresh) and not (out / "synth.partial.json").exists()


def test_ctrl_c_stops_the_render_workers_without_a_traceback(tmp_path):
    """A real Ctrl-C (SIGINT to the process group) while two workers render: exit 130, one line,
    no traceback from the workers; the rerun finishes the set."""
    import os
    import signal
    import time

    out = tmp_path / "set"
    command = [sys.executable, "-m", "damo_lit.cli.data", "synth", "--out", str(out), "--videos", "40", "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while proc.poll() is None and not list((out / "videos").glob("train_*[0-9].mp4")):
        time.sleep(0.05)  # the first finished video: the workers are at work
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted with" in stderr and "Traceback" not in stdout + stderr
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "videos").glob("*.mp4")}
    assert kept
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "continuing the unfinished set" in done.stdout
    assert all((out / "videos" / name).stat().st_mtime_ns == t for name, t in kept.items())
    assert not list((out / "videos").glob("*.partial.mp4")) and (out / "synth.json").is_file()


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


def test_stats_names_a_split_file_that_is_not_there(synth_dir, tmp_path, capsys):
    """A typo in data.splits is an error; a folder without one split's file says so; a config
    that keeps no sample fails."""
    val = synth_dir / "annotations" / "val.jsonl"
    assert main(["stats", "data=damo_jsonl", "data.splits.train=/nope.jsonl", f"data.annotations={val}"]) == 1
    assert "data.splits.train=/nope.jsonl: no such file" in capsys.readouterr().err
    folder = tmp_path / "annotations"
    folder.mkdir()
    (folder / "train.jsonl").write_text((synth_dir / "annotations" / "train.jsonl").read_text())
    assert main(["stats", "data=damo_jsonl", f"data.annotations={folder}", f"data.video_dir={synth_dir}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    stats = json.loads(out[-1])
    assert list(stats["splits"]) == ["train"]
    assert stats["splits_missing"] == {"val": str(folder / "val.jsonl"), "test": str(folder / "test.jsonl")}
    assert f"    val: no annotation file ({folder / 'val.jsonl'} is not there)" in out
    sta = tmp_path / "sta.txt"
    sta.write_text("AAA 1 5##sits.\n")
    (tmp_path / "meta.csv").write_text("id,length\nBBB,30.0\n")
    code = main(["stats", "data=charades_sta", f"data.annotations={sta}", f"data.durations={tmp_path / 'meta.csv'}",
                 "data.on_bad_record=drop"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1 and json.loads(captured.out.strip().splitlines()[-1])["samples"] == 0
    assert "no sample kept" in captured.err
