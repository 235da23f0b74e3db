"""Annotation sources on the real reference files and on small files with every quirk."""

from __future__ import annotations

import json

import pytest

from damo_lit.data.collection import load_split, source_specs
from damo_lit.data.sources import FIX_KINDS, BadRecordsError, SourceSpec, load_source
from damo_lit.data.timestamps import render


def _nonzero(result) -> dict[str, int]:
    return {k: v for k, v in result.fixes.counts.items() if v}


def test_charades_sta_real_files(shared_data):
    spec = SourceSpec(
        "charades_sta",
        str(shared_data / "charades_sta" / "charades_sta_test.txt"),
        durations=(str(shared_data / "charades_sta" / "Charades_v1_test.csv"),),
    )
    result = load_source(spec)
    assert len(result.records) == 3720
    assert len({r.video for r in result.records}) == 1334
    # each query joined to its video's duration; windows past the end clipped and counted
    assert all(r.duration > 0 and r.spans[0][1] <= r.duration for r in result.records)
    assert _nonzero(result) == {"window_end_clipped": 562}
    first = result.records[0]
    assert first.video == "3MSZA.mp4" and first.duration == pytest.approx(30.96)
    assert first.spans == ((24.3, 30.4),) and first.task == "grounding"
    assert first.turns[0].content == "when does this happen: person turn a light on?"
    assert render(first.turns[1].content, first.spans, first.duration, "seconds") == "from 24.3 to 30.4 seconds."
    # without the durations table nothing is joined: every record is dropped and counted, never kept silently
    bare = load_source(SourceSpec("charades_sta", spec.annotations))
    assert bare.records == [] and bare.fixes.counts["duration_missing_dropped"] == 3720


def test_qvhighlights_real_file(shared_data):
    result = load_source(SourceSpec("qvhighlights", str(shared_data / "qvhighlights" / "highlight_val_release.jsonl")))
    assert len(result.records) == 1550
    assert sum(len(r.spans) for r in result.records) == 2803
    several = next(r for r in result.records if len(r.spans) > 1)
    assert several.turns[1].content.count("{span:") == len(several.spans)
    durations = [r.duration for r in result.records]
    assert durations.count(150) == 1511 and min(durations) == 120  # each query's own duration
    # ids such as NUsG9BgSes0_210.0_360.0 end in '.0', which is no container: the extension is still added
    assert result.records[0].video == "NUsG9BgSes0_210.0_360.0.mp4"
    assert all(r.video.endswith(".mp4") for r in result.records)


def test_video_ids_keep_a_container_suffix_and_get_the_extension_otherwise(tmp_path):
    vids = ["-4Mlqc7PbZY_210.0_360.0", "v_QOlSCBRmfWY", "3MSZA", "clip.MKV", "talk.webm", "a/b.mov", "old.avi"]
    ann = tmp_path / "q.jsonl"
    ann.write_text("".join(
        json.dumps({"qid": i, "query": "something", "vid": v, "duration": 10, "relevant_windows": [[1, 2]]}) + "\n"
        for i, v in enumerate(vids)
    ))  # fmt: skip
    result = load_source(SourceSpec("qvhighlights", str(ann)))
    assert [r.video for r in result.records] == [
        "-4Mlqc7PbZY_210.0_360.0.mp4", "v_QOlSCBRmfWY.mp4", "3MSZA.mp4", "clip.MKV", "talk.webm", "a/b.mov", "old.avi",
    ]  # fmt: skip
    webm = load_source(SourceSpec("qvhighlights", str(ann), video_ext=".webm"))
    assert [r.video for r in webm.records][:2] == ["-4Mlqc7PbZY_210.0_360.0.webm", "v_QOlSCBRmfWY.webm"]


def _charades_files(tmp_path):
    ann = tmp_path / "sta.txt"
    ann.write_text(
        "AAA 1.0 5.0##a fine window.\n"
        "AAA 8.0 3.0##a reversed window.\n"
        "AAA 5.0 40.0##ends after the video.\n"
        "AAA -2 4##starts before zero.\n"
        "AAA 4 4##an empty window.\n"
        "AAA 31 35##entirely after the video.\n"
    )
    csv = tmp_path / "meta.csv"
    csv.write_text('id,length\nAAA,30.0\nBBB,""\n')
    return ann, csv


def test_window_fixups_clip_and_drop_are_counted(tmp_path):
    ann, csv = _charades_files(tmp_path)
    clip = load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), on_bad_window="clip"))
    assert [r.spans[0] for r in clip.records] == [(1.0, 5.0), (3.0, 8.0), (5.0, 30.0), (0.0, 4.0)]
    assert _nonzero(clip) == {
        "window_reversed_swapped": 1,
        "window_end_clipped": 1,
        "window_start_clipped": 1,
        "window_empty_dropped": 1,
        "window_outside_dropped": 1,
        "record_no_window_dropped": 2,
    }
    drop = load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), on_bad_window="drop"))
    assert [r.spans[0] for r in drop.records] == [(1.0, 5.0)]
    assert _nonzero(drop) == {
        "window_reversed_dropped": 1,
        "window_end_dropped": 1,
        "window_start_dropped": 1,
        "window_empty_dropped": 1,
        "window_outside_dropped": 1,
        "record_no_window_dropped": 5,
    }
    assert set(clip.fixes.counts) == set(FIX_KINDS)


def test_bad_records_error_lists_file_line_or_are_counted_drops(tmp_path):
    ann = tmp_path / "sta.txt"
    ann.write_text("AAA 1 5##fine.\nthis line is malformed\nCCC 1 2##a video nobody knows.\nAAA x 2##bad number.\n")
    csv = tmp_path / "meta.csv"
    csv.write_text("id,length\nAAA,30\n")
    spec = SourceSpec("charades_sta", str(ann), durations=(str(csv),), video_dir=str(tmp_path / "videos"))
    with pytest.raises(BadRecordsError) as info:
        load_source(spec)
    message = str(info.value)
    assert "3 bad record(s)" in message
    assert f"{ann}:2: expected 'VID start end##sentence'" in message
    assert f"{ann}:3: unknown video 'CCC.mp4'" in message
    assert f"{ann}:4: start and end must be numbers" in message
    dropped = load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), on_bad_record="drop"))
    assert len(dropped.records) == 1
    assert _nonzero(dropped) == {"record_malformed_dropped": 2, "record_unknown_video_dropped": 1}


def test_missing_duration_is_read_from_the_video(tmp_path, shared_data):
    ann = tmp_path / "q.jsonl"
    rows = [
        {"qid": 1, "query": "a dog barks", "vid": "dog_barking", "relevant_windows": [[1, 3], [5, 60]]},
        {"qid": 2, "query": "gone", "vid": "absent", "relevant_windows": [[1, 3]]},
        {"qid": 3, "query": "no windows", "vid": "dog_barking", "duration": 7},
    ]
    ann.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    spec = SourceSpec("qvhighlights", str(ann), video_dir=str(shared_data / "videos"), on_bad_record="drop")
    result = load_source(spec)
    (record,) = result.records
    assert record.duration == pytest.approx(7.08, abs=0.01)  # the video stream's, not the 7.2 s audio's
    assert record.spans == ((1.0, 3.0), (5.0, record.duration))
    assert _nonzero(result) == {
        "duration_probed": 1,
        "window_end_clipped": 1,
        "duration_missing_dropped": 1,
        "record_malformed_dropped": 2,
    }


def test_activitynet_captions_paragraph_and_queries(tmp_path):
    path = tmp_path / "anet.json"
    path.write_text(json.dumps({
        "v_a": {"duration": 20.0, "timestamps": [[0, 5], [4, 25], [21, 22]], "sentences": ["A man walks.", "He sits.", "Gone."]},
    }))  # fmt: skip
    result = load_source(SourceSpec("activitynet_captions", str(path)))
    caption, *grounding = result.records
    assert caption.video == "v_a.mp4" and {g.video for g in grounding} == {"v_a.mp4"}
    assert caption.task == "caption" and caption.spans == ((0.0, 5.0), (4.0, 20.0))
    assert render(caption.caption, caption.spans, 20.0, "relative") == "A man walks from 0 to 25. He sits from 20 to 99. Gone."
    assert [g.spans for g in grounding] == [((0.0, 5.0),), ((4.0, 20.0),)]
    assert grounding[1].turns[0].content == "when does this happen: He sits?"
    # each window of the file counted once (the paragraph's), though its query repeats it; the query left
    # without its window is a record dropped
    assert _nonzero(result) == {"window_end_clipped": 1, "window_outside_dropped": 1, "record_no_window_dropped": 1}


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_caption_list(tmp_path, kind):
    if kind == "csv":
        path = tmp_path / "webvid.csv"
        path.write_text("videoid,name,duration\n1001,A cat jumps.,PT00H00M11S\n1002,A dog runs.,7.5\n1003,,3\n")
        spec = SourceSpec("caption_list", str(path), on_bad_record="drop")
    else:
        path = tmp_path / "internvid.jsonl"
        path.write_text(json.dumps({"clip": "a/b.mp4", "Caption": "Waves.", "seconds": 4}) + "\n")
        spec = SourceSpec("caption_list", str(path), columns={"duration": "seconds"})
    result = load_source(spec)
    if kind == "csv":
        assert [(r.video, r.caption, r.duration) for r in result.records] == [
            ("1001.mp4", "A cat jumps.", 11.0),
            ("1002.mp4", "A dog runs.", 7.5),
        ]
        assert result.fixes.counts["record_malformed_dropped"] == 1
    else:
        assert [(r.video, r.caption, r.duration, r.task) for r in result.records] == [("a/b.mp4", "Waves.", 4.0, "caption")]


INTERNVID = """YoutubeID,Start_timestamp,End_timestamp,Caption,UMT_Score
dog_barking,00:00:01.000,00:00:03.500,A dog barks.,0.41
dog_barking,00:00:04.000,00:00:09.000,The dog sits.,0.40
dog_barking,00:00:05.000,00:00:02.000,The dog turns.,0.39
dog_barking,00:00:08.000,00:00:09.000,After the end.,0.38
dog_barking,00:00:01.000,,Half a clip.,0.37
dog_barking,0:xx,00:00:02.000,Garbage.,0.36
"""


def test_caption_list_internvid_clips_are_spans(tmp_path, shared_data):
    path = tmp_path / "internvid.csv"
    path.write_text(INTERNVID)
    spec = SourceSpec("caption_list", str(path), video_dir=str(shared_data / "videos"), on_bad_record="drop")
    result = load_source(spec)
    assert [(r.video, r.task) for r in result.records] == [("dog_barking.mp4", "caption")] * 3
    duration = result.records[0].duration
    assert duration == pytest.approx(7.08, abs=0.01)  # InternVid has no duration column: the video stream's, read from the file
    # two clips of one video: two captions of two spans, not two captions of the whole video
    assert [r.spans for r in result.records] == [((1.0, 3.5),), ((4.0, duration),), ((2.0, 5.0),)]
    assert result.records[0].caption == "A dog barks {span:0}."
    assert render(result.records[0].caption, result.records[0].spans, duration, "seconds") == (
        "A dog barks from 1.0 to 3.5 seconds."
    )
    assert _nonzero(result) == {
        "duration_probed": 4,
        "window_end_clipped": 1,
        "window_reversed_swapped": 1,
        "window_outside_dropped": 1,
        "record_no_window_dropped": 1,  # a clip caption without its clip would describe the whole video
        "record_malformed_dropped": 2,  # a start without an end; a start that is no time
    }
    with pytest.raises(BadRecordsError) as info:
        load_source(SourceSpec("caption_list", str(path), video_dir=str(shared_data / "videos")))
    assert f"{path}:6: a clip needs both a start ('Start_timestamp') and an end ('End_timestamp')" in str(info.value)
    assert f"{path}:7: clip start/end must be seconds or hh:mm:ss.mmm, got '0:xx'" in str(info.value)


def test_caption_list_clip_windows_follow_on_bad_window_drop(tmp_path):
    path = tmp_path / "clips.jsonl"
    rows = [(0, 3.5), (4, 9), (5, 2), (-1, 2)]
    path.write_text("".join(
        json.dumps({"video": "v", "caption": "Dogs.", "duration": 7.2, "start": s, "end": e}) + "\n" for s, e in rows
    ))  # fmt: skip
    result = load_source(SourceSpec("caption_list", str(path), on_bad_window="drop"))
    assert [r.spans for r in result.records] == [((0.0, 3.5),)]  # a JSON 0 is a start, not a missing one
    assert _nonzero(result) == {
        "window_end_dropped": 1,
        "window_reversed_dropped": 1,
        "window_start_dropped": 1,
        "record_no_window_dropped": 3,
    }


def test_caption_list_webvid_page_dir_and_named_columns(tmp_path):
    path = tmp_path / "webvid.csv"
    path.write_text("videoid,page_dir,name,duration\n1001,000001_000050,A cat jumps.,PT00H00M11S\n")
    (record,) = load_source(SourceSpec("caption_list", str(path))).records
    assert (record.video, record.caption, record.spans) == ("000001_000050/1001.mp4", "A cat jumps.", ())
    with pytest.raises(BadRecordsError, match=r"webvid.csv:2: no column 't0' \(data.columns.start\)"):
        load_source(SourceSpec("caption_list", str(path), columns={"start": "t0"}))
    with pytest.raises(ValueError, match=r"data.columns: unknown key\(s\) \['strat'\]"):
        load_source(SourceSpec("caption_list", str(path), columns={"strat": "t0"}))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"format": "caption_list", "annotations": "???"}, "caption_list: data.annotations is required (a file path)"),
        ({"sources": [{"format": "damo_jsonl", "annotations": "???"}]}, "data.sources[0].annotations is required"),
        ({"format": "caption_list", "annotations": "ANN", "video_dir": "???"}, "data.video_dir is required (a folder)"),
    ],
)
def test_missing_mandatory_keys_are_named(tmp_path, options, message):
    ann = tmp_path / "list.csv"
    ann.write_text("video,caption\na.mp4,A cat.\n")
    options = {k: str(ann) if v == "ANN" else v for k, v in options.items()}
    with pytest.raises(ValueError) as info:
        load_split(source_specs(options), "train")  # what training and damo-data stats read
    assert message in str(info.value)
    assert "???" not in str(info.value)


@pytest.mark.parametrize("data", ["caption_list", "damo_jsonl"])
def test_stats_without_annotations_names_the_key(data, capsys):
    from damo_lit.cli.data import main

    assert main(["stats", f"data={data}"]) == 1
    err = capsys.readouterr().err
    assert f"source {data}: data.annotations is required (a file path)" in err and "???" not in err


def test_damo_jsonl_folder_and_mixture_weights(synth_dir, shared_data):
    options = {
        "sources": [
            {"format": "damo_jsonl", "annotations": str(synth_dir / "annotations"), "video_dir": str(synth_dir), "weight": 2},
            {"format": "qvhighlights", "annotations": str(shared_data / "qvhighlights" / "highlight_val_release.jsonl"),
             "weight": 0.01, "name": "qvh"},
        ],
        "on_bad_window": "drop",
    }  # fmt: skip
    specs = source_specs(options)
    assert [s.on_bad_window for s in specs] == ["drop", "drop"]
    single = load_split(specs[:1], "train", ("grounding",))
    mixed = load_split(specs, "train", ("grounding",), weighted=True, seed=5)
    assert mixed.per_source == {"damo_jsonl": 2 * len(single.samples), "qvh": 16}  # round(0.01 * 1550)
    assert all(s.record.task == "grounding" for s in mixed.samples)
    assert all(s.video_path.startswith(str(synth_dir)) for s in mixed.samples if s.source == "damo_jsonl")
    again = load_split(specs, "train", ("grounding",), weighted=True, seed=5)
    assert [s.record.id for s in again.samples] == [s.record.id for s in mixed.samples]
    with pytest.raises(ValueError, match=r"data.sources\[0\]: unknown key\(s\) \['wieght'\]"):
        source_specs({"sources": [{"format": "damo_jsonl", "annotations": "x", "wieght": 2}]})
