"""Real files saved by other tools: text that is not UTF-8 is a bad record named `file:line` (a JSON
file read whole: an error naming its line and byte), a UTF-8 byte-order mark is ignored, and two
sources of one mixture never give the same record id."""

from __future__ import annotations

import codecs
import json

import pytest

from damo_lit.augment.sources import load_videos, sniff_format
from damo_lit.data.collection import load_split, source_specs
from damo_lit.data.schema import RecordError
from damo_lit.data.sources import BadRecordsError, SourceSpec, load_source
from damo_lit.data.sources.events import read_activitynet_captions, read_charades_durations, read_charades_sta

BOM = codecs.BOM_UTF8
ANET = json.dumps({"v_a": {"duration": 20, "timestamps": [[0, 5]], "sentences": ["Sits."]}}).encode()
LATIN1_LINE = "BBB 1.0 2.0##un caf\xe9.\n".encode("latin-1")  # byte 0xe9 is byte 20 of the line


def _charades(tmp_path, text: bytes, durations: bytes = b"id,length\nAAA,30.0\nBBB,20.0\n"):
    ann, csv = tmp_path / "sta.txt", tmp_path / "Charades_v1.csv"
    ann.write_bytes(text)
    csv.write_bytes(durations)
    return ann, csv


def _nonzero(result) -> dict[str, int]:
    return {k: v for k, v in result.fixes.counts.items() if v}


def test_a_charades_line_that_is_not_utf8_is_one_bad_record(tmp_path):
    ann, csv = _charades(tmp_path, b"AAA 1.0 5.0##a person sits.\n" + LATIN1_LINE + b"AAA 6 8##stands.\n")
    with pytest.raises(BadRecordsError) as info:
        load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),)))
    assert f"{ann}:2: not UTF-8 text (byte 0xe9 at byte 20)" in str(info.value)
    assert "1 bad record(s)" in str(info.value)
    dropped = load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), on_bad_record="drop"))
    assert [r.meta["query"] for r in dropped.records] == ["a person sits.", "stands."]
    assert _nonzero(dropped) == {"record_malformed_dropped": 1}
    with pytest.raises(RecordError, match=r"sta.txt:2: not UTF-8 text \(byte 0xe9 at byte 20\)"):
        read_charades_sta(ann)  # the raw reader (damo-augment's): named, not a codec traceback


def test_a_durations_row_that_is_not_utf8_is_a_bad_record(tmp_path):
    ann, csv = _charades(tmp_path, b"AAA 1 5##sits.\nBBB 1 5##stands.\n",
                         b"id,subject,length\nAAA,caf\xe9,30.0\nBBB,x,20\n")  # fmt: skip
    with pytest.raises(BadRecordsError) as info:
        load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), video_dir=str(tmp_path)))
    message = str(info.value)
    assert f"{csv}:2: not UTF-8 text (byte 0xe9 at byte 8)" in message
    assert f"{ann}:1: unknown video 'AAA.mp4'" in message  # its duration was on the bad row
    dropped = load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), on_bad_record="drop"))
    assert [r.video for r in dropped.records] == ["BBB.mp4"]
    assert _nonzero(dropped) == {"record_malformed_dropped": 1, "record_unknown_video_dropped": 1}
    with pytest.raises(RecordError, match=r"Charades_v1.csv:2: not UTF-8 text"):
        read_charades_durations(csv)
    csv.write_bytes(b"id,l\xe9ngth\nAAA,30\n")  # a header that is not UTF-8: no row can be read
    with pytest.raises(BadRecordsError, match=r"Charades_v1.csv:1: not UTF-8 text \(byte 0xe9 at byte 5\)"):
        load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), on_bad_record="drop"))


def test_a_video_listed_with_an_unusable_length_is_known_without_a_duration(tmp_path):
    """Its queries are dropped as `duration_missing_dropped` (or the file is probed), not refused
    as an unknown video: the id is in the durations file."""
    ann, csv = _charades(tmp_path, b"AAA 1 5##sits.\nBBB 1 5##stands.\nCCC 1 5##runs.\nDDD 1 5##jumps.\n",
                         b"id,length\nAAA,\nBBB,0\nCCC,abc\nDDD,20\n")  # fmt: skip
    loaded = load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),), video_dir=str(tmp_path)))
    assert [r.video for r in loaded.records] == ["DDD.mp4"]
    assert _nonzero(loaded) == {"duration_missing_dropped": 3}
    assert read_charades_durations(csv) == {"DDD": 20.0}


def test_a_caption_list_row_that_is_not_utf8_is_a_bad_record(tmp_path):
    path = tmp_path / "webvid.csv"
    path.write_bytes(b"videoid,name,duration\n1001,A cat.,5\n1002,Un caf\xe9.,5\n1003,A dog.,5\n")
    with pytest.raises(BadRecordsError, match=r"webvid.csv:3: not UTF-8 text \(byte 0xe9 at byte 12\)"):
        load_source(SourceSpec("caption_list", str(path)))
    dropped = load_source(SourceSpec("caption_list", str(path), on_bad_record="drop"))
    assert [r.caption for r in dropped.records] == ["A cat.", "A dog."]
    assert _nonzero(dropped) == {"record_malformed_dropped": 1}


def test_an_activitynet_file_that_is_not_utf8_names_its_line_and_byte(tmp_path):
    path = tmp_path / "anet.json"
    path.write_bytes(b'{"v_a": {"duration": 20,\n "timestamps": [[0, 5]], "sentences": ["Un caf\xe9."]}}')
    with pytest.raises(BadRecordsError) as err:
        load_source(SourceSpec("activitynet_captions", str(path), on_bad_record="drop"))
    head, line = str(err.value).splitlines()  # drop skips bad records, not a whole file: not advised
    assert head == "the whole file is unreadable (data.on_bad_record=drop skips bad records, not a file with none):"
    assert line.endswith("anet.json:2: not UTF-8 text (byte 0xe9 at byte 47)")
    with pytest.raises(RecordError, match=r"anet.json:2: not UTF-8 text \(byte 0xe9 at byte 47\)"):
        read_activitynet_captions(path)


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    ann, csv = _charades(tmp_path, BOM + b"AAA 1.0 5.0##a person sits.\r\n", BOM + b"id,length\r\nAAA,30.0\r\n")
    (record,) = load_source(SourceSpec("charades_sta", str(ann), durations=(str(csv),))).records
    assert (record.video, record.duration, record.id) == ("AAA.mp4", 30.0, "charades_sta-AAA-1")
    webvid = tmp_path / "webvid.csv"
    webvid.write_bytes(BOM + "videoid,name,duration\n1001,Un café.,5\n".encode())
    (record,) = load_source(SourceSpec("caption_list", str(webvid))).records
    assert (record.video, record.caption) == ("1001.mp4", "Un café.")
    anet = tmp_path / "anet.json"
    anet.write_bytes(BOM + ANET)
    assert [r.id for r in load_source(SourceSpec("activitynet_captions", str(anet))).records] == [
        "activitynet-v_a-caption", "activitynet-v_a-g0",
    ]  # fmt: skip


def test_damo_augment_reads_a_bom_and_names_text_that_is_not_utf8(tmp_path):
    ann, csv = _charades(tmp_path, BOM + b"AAA 1.0 5.0##a person sits.\n", BOM + b"id,length\nAAA,30.0\n")
    assert sniff_format(ann) == "charades_sta"
    (video,) = load_videos(ann, "charades_sta", csv).videos
    assert (video.video, video.duration) == ("AAA", 30.0)
    anet = tmp_path / "anet.json"
    anet.write_bytes(BOM + ANET)
    assert sniff_format(anet) == "activitynet" and len(load_videos(anet, "activitynet").videos) == 1
    ann.write_bytes(LATIN1_LINE)
    with pytest.raises(RecordError, match=r"sta.txt:1: not UTF-8 text \(byte 0xe9 at byte 20\)"):
        load_videos(ann, "charades_sta", csv)
    anet.write_bytes(b'{"v_a": {"duration": 20, "timestamps": [[0, 5]], "sentences": ["caf\xe9"]}}')
    with pytest.raises(RecordError, match=r"anet.json:1: not UTF-8 text"):
        load_videos(anet, "activitynet")


def test_activitynet_counts_each_bad_window_once(tmp_path):
    """The paragraph and the query of one sentence share its window: one [4, 25] window in a 20 s
    video is one window_end_clipped, not two."""
    path = tmp_path / "anet.json"
    path.write_text(json.dumps({"v_A": {"duration": 20.0, "timestamps": [[0, 5], [4, 25]], "sentences": ["A.", "B."]}}))
    result = load_source(SourceSpec("activitynet_captions", str(path)))
    assert [r.spans for r in result.records] == [((0.0, 5.0), (4.0, 20.0)), ((0.0, 5.0),), ((4.0, 20.0),)]
    assert _nonzero(result) == {"window_end_clipped": 1}


def test_two_sources_of_one_mixture_never_repeat_an_id(tmp_path):
    """ActivityNet's val_1 and val_2 annotate the same videos: ids made from the video id alone
    were repeated, which damo-score refuses. A single source keeps its ids."""
    entry = {"duration": 20.0, "timestamps": [[0, 5]], "sentences": ["A man walks."]}
    for name in ("val_1", "val_2"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"v_A": entry}))
    named = [{"format": "activitynet_captions", "annotations": str(tmp_path / f"{n}.json"), "name": n}
             for n in ("val_1", "val_2")]  # fmt: skip
    ids = [s.record.id for s in load_split(source_specs({"sources": named}), None).samples]
    assert ids == ["val_1/activitynet-v_A-caption", "val_1/activitynet-v_A-g0",
                   "val_2/activitynet-v_A-caption", "val_2/activitynet-v_A-g0"]  # fmt: skip
    unnamed = [{k: v for k, v in entry.items() if k != "name"} for entry in named]
    ids = [s.record.id for s in load_split(source_specs({"sources": unnamed}), None).samples]
    assert len(set(ids)) == 4 and ids[0] == "sources[0]/activitynet-v_A-caption"
    single = source_specs({"format": "activitynet_captions", "annotations": named[0]["annotations"], "name": "anet"})
    assert [s.record.id for s in load_split(single, None).samples] == ["activitynet-v_A-caption", "activitynet-v_A-g0"]
    same_name = [{**entry, "name": "anet"} for entry in named]
    with pytest.raises(ValueError, match=r"data\.sources\[1\]\.name: 'anet' is data\.sources\[0\]'s name too"):
        source_specs({"sources": same_name})
