"""The raw paragraph-level readers, on the real Charades-STA files and on small hand-written ones."""

from __future__ import annotations

import json

import pytest

from damo_lit.data.schema import RecordError
from damo_lit.data.sources.events import (
    VideoEvents,
    read_activitynet_captions,
    read_charades_durations,
    read_charades_sta,
)


def test_charades_sta_real_files(shared_data):
    durations = read_charades_durations(shared_data / "charades_sta" / "Charades_v1_test.csv")
    videos = read_charades_sta(shared_data / "charades_sta" / "charades_sta_test.txt", durations)
    assert len(videos) == 1334
    assert sum(len(v.events) for v in videos) == 3720
    assert all(v.duration is not None and v.duration > 0 for v in videos)
    first = videos[0]
    assert first.video == "3MSZA"
    assert first.events[0] == (24.3, 30.4, "person turn a light on.")
    assert first.duration == pytest.approx(durations["3MSZA"])


def test_charades_sta_keeps_windows_unfixed_and_names_bad_lines(tmp_path):
    path = tmp_path / "sta.txt"
    path.write_text("AAA 5.0 2.0##reversed window.\nAAA 1 40##ends late.\nBBB 0 3##ok.\n")
    videos = read_charades_sta(path, {"AAA": 30.0})
    assert videos == [
        VideoEvents("AAA", 30.0, ((5.0, 2.0, "reversed window."), (1.0, 40.0, "ends late."))),
        VideoEvents("BBB", None, ((0.0, 3.0, "ok."),)),
    ]
    path.write_text("AAA 1 2##fine.\nBBB one 3##bad number.\n")
    with pytest.raises(RecordError, match=r"sta.txt:2: start and end must be numbers"):
        read_charades_sta(path)


def test_activitynet_captions(tmp_path):
    path = tmp_path / "anet.json"
    data = {
        "v_a": {"duration": 20.5, "timestamps": [[0, 5.5], [4, 25]], "sentences": ["A man walks.", " He sits. "]},
        "v_b": {"duration": 10, "timestamps": [[3, 1]], "sentences": ["Reversed."]},
    }
    path.write_text(json.dumps(data))
    videos = read_activitynet_captions(path)
    assert videos[0] == VideoEvents("v_a", 20.5, ((0.0, 5.5, "A man walks."), (4.0, 25.0, "He sits.")))
    assert videos[1].events == ((3.0, 1.0, "Reversed."),)
    data["v_c"] = {"duration": 3, "timestamps": [[0, 1]], "sentences": []}
    path.write_text(json.dumps(data))
    with pytest.raises(RecordError, match=r"anet.json:v_c: 1 timestamps but 0 sentences"):
        read_activitynet_captions(path)
