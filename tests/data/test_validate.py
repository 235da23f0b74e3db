"""damo-data validate: what one record cannot show (duplicate ids, videos outside the video folder)."""

from __future__ import annotations

import json

import pytest

from damo_lit.cli.data import main
from damo_lit.data.schema import validate_files, video_path_problem


def _write(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture()
def val_records(synth_dir) -> list[dict]:
    return [json.loads(line) for line in (synth_dir / "annotations" / "val.jsonl").read_text().splitlines()]


def test_duplicate_ids_name_both_places(tmp_path, val_records, capsys):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(first, val_records[:3] + [val_records[1]])
    _write(second, [val_records[2], *val_records[3:5]])
    assert main(["validate", str(first), str(second)]) == 1
    err = capsys.readouterr().err
    assert f"{first}:4: duplicate id {val_records[1]['id']!r}: also at {first}:2" in err
    assert f"{second}:1: duplicate id {val_records[2]['id']!r}: also at {first}:3" in err  # across files too
    assert "2 bad record(s), 5 good" in err


@pytest.mark.parametrize(
    "video, reason",
    [
        ("/data/videos/a.mp4", "absolute or home path"),
        ("C:\\videos\\a.mp4", "absolute or home path"),
        ("~/videos/a.mp4", "absolute or home path"),
        ("../other/a.mp4", "'..' part"),
        ("videos/../../a.mp4", "'..' part"),
        ("videos\\..\\..\\a.mp4", "'..' part"),
    ],
)
def test_videos_outside_the_video_folder_are_errors(tmp_path, val_records, capsys, video, reason):
    path = tmp_path / "v.jsonl"
    _write(path, [val_records[0], {**val_records[1], "video": video}])
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: 'video' must" in err and reason in err and "1 bad record(s), 1 good" in err


def test_relative_videos_with_dots_in_names_pass(tmp_path, val_records):
    path = tmp_path / "ok.jsonl"
    _write(path, [{**r, "video": v} for r, v in zip(val_records, ["a..b.mp4", "./videos/x.mp4", "videos/.hidden.mp4"])])
    assert video_path_problem("videos/a.mp4") is None
    assert validate_files([path]) == (3, [])
