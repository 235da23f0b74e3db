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


GROUNDING = {"id": "g", "video": "v.mp4", "duration": 10, "task": "grounding", "spans": [[1, 2]],
             "turns": [{"role": "user", "content": "when?"}, {"role": "assistant", "content": "{span:0}."}]}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"task": "caption", "caption": "x {span:3}", "turns": []}, "'caption' refers to {span:3} but the record has 1"),
        ({"turns": GROUNDING["turns"][:1]}, "turns must end with an 'assistant' turn"),
        ({"task": "dialogue", "turns": [*GROUNDING["turns"], {"role": "user", "content": "and?"}]},
         "turns must end with an 'assistant' turn"),
        ({"turns": [GROUNDING["turns"][0], {"role": "assistant", "content": "from 1.0 to 2.0 seconds."}]},
         "the final answer of a 'grounding' record must refer to the span it is scored against"),
        ({"task": "dialogue", "turns": [*GROUNDING["turns"], {"role": "user", "content": "and then?"},
                                        {"role": "assistant", "content": "nothing."}]},
         "the final answer of a 'dialogue' record must refer to the span"),
        ({"turns": [{"role": "user", "content": "what is in the <video> ?"}, GROUNDING["turns"][1]]},
         "turns[0] holds <video>, the token the video is spliced in at"),
        ({"task": "caption", "caption": "a <video> of a dog", "turns": []}, "'caption' holds <video>"),
        ({"duration": True}, "'duration' must be a number, got True"),
        ({"duration": "10"}, "'duration' must be a number, got '10'"),
        ({"spans": [[True, 2]]}, "spans[0] must hold numbers, got [True, 2]"),
    ],
)
def test_records_that_would_break_training_or_scoring_are_bad(tmp_path, capsys, change, reason):
    """What the loader could not turn into a sample (a placeholder of no span, a conversation that
    ends with a question) or would always score as a miss (a final answer with a literal time)."""
    path = tmp_path / "r.jsonl"
    _write(path, [GROUNDING, {**GROUNDING, "id": "bad", **change}])
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: {reason}" in err and "1 bad record(s), 1 good" in err


def test_a_byte_order_mark_opens_a_file_without_harm(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(GROUNDING) + "\n" + json.dumps({**GROUNDING, "id": "h"})).encode())
    assert validate_files([path]) == (2, [])


def test_damo_records_with_absolute_videos_get_no_format_hint(tmp_path, val_records, capsys):
    path = tmp_path / "abs.jsonl"
    _write(path, [{**r, "video": f"/data/{r['video']}"} for r in val_records[:2]])
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "absolute or home path" in err and "no record is DaMO JSONL" not in err


def test_a_file_named_twice_is_checked_once(tmp_path, val_records, capsys):
    path = tmp_path / "v.jsonl"
    _write(path, val_records[:3])
    assert main(["validate", str(path), str(tmp_path / "." / "v.jsonl")]) == 0
    captured = capsys.readouterr()
    assert "named more than once; checked once" in captured.err and "3 records OK" in captured.out


def test_a_file_in_a_public_format_gets_a_short_list_and_a_hint(shared_data, capsys):
    release = shared_data / "qvhighlights" / "highlight_val_release.jsonl"
    assert main(["validate", str(release)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert sum("missing required key 'id'" in line for line in err) == 50  # not all 1,550
    assert f"  ... and 1500 more bad record(s) in {release}" in err
    assert any("no record is DaMO JSONL" in line and "data=NAME" in line and "qvhighlights" in line for line in err)
    assert err[-1] == "1550 bad record(s), 0 good"
