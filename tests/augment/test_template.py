"""The template backend end to end through damo-augment's config, on ActivityNet Captions,
Charades-STA (a small file written here, and the real test split, a subset) and DaMO JSONL."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from damo_lit.augment.items import QuestionSpec
from damo_lit.augment.sources import clean_sentence, load_videos
from damo_lit.augment.template import TemplateBackend
from damo_lit.augment.text import inline_case
from damo_lit.cli.augment import run
from damo_lit.cli.common import compose
from damo_lit.data.schema import Record, Turn, write_jsonl

from .conftest import ANET, ANET_CLEAN
from .helpers import check_grounding, read_valid


def augment(overrides: list[str]):
    return run(compose("augment", overrides + ["progress=false"]))


def test_activitynet_template(anet_file: Path, tmp_path: Path) -> None:
    drop = augment([f"input={anet_file}", "format=activitynet", f"out={tmp_path / 'drop.jsonl'}", "on_bad_window=drop"])
    assert drop.source_fixes == {"window_end_dropped": 1, "window_outside_dropped": 1,
                                 "window_reversed_dropped": 1, "window_start_dropped": 1, "record_no_window_dropped": 1}
    assert drop.videos_in_output == 2  # v_short lost its only window

    out = tmp_path / "anet_qa.jsonl"
    summary = augment([f"input={anet_file}", "format=activitynet", f"out={out}"])
    records = read_valid(out)
    check_grounding(records, ANET_CLEAN)
    assert summary.records == len(records) and summary.videos_in_output == 3
    assert summary.source_fixes == {"window_end_clipped": 1, "window_outside_dropped": 1,
                                    "window_reversed_swapped": 1, "window_start_clipped": 1}
    types = Counter(r.meta["question_type"] for r in records)
    assert set(types) == {"when", "before", "after", "duration", "order", "dialogue"}
    # v_short has a single event: only "when" and "duration" can be asked, once each
    short = [r for r in records if r.meta["source_video"] == "v_short"]
    assert sorted(r.meta["question_type"] for r in short) == ["duration", "when"]
    for rec in records:
        assert rec.video == rec.meta["source_video"] + ".mp4"
        if rec.meta["question_type"] == "when":
            (event,) = rec.meta["source_events"][0]
            sentence = inline_case(clean_sentence(ANET[rec.meta["source_video"]]["sentences"][event]))
            assert sentence in rec.turns[0].content
        if rec.task == "dialogue":
            assert len(rec.turns) == 6 and rec.turns[-1].role == "assistant"
            assert all(a[0] < b[0] for a, b in zip(rec.spans, rec.spans[1:]))
    assert len({r.id for r in records}) == len(records)
    written = json.loads((tmp_path / "anet_qa.jsonl.summary.json").read_text())
    assert written["items_per_type"] == dict(sorted(types.items()))
    assert sum(written["span_length_histogram"].values()) == sum(len(r.spans) for r in records)
    assert written["rejects"] == {}


def test_template_is_seeded(anet_file: Path, tmp_path: Path) -> None:
    source = load_videos(anet_file, "activitynet")
    backend = TemplateBackend()
    first = [backend.generate(v, QuestionSpec(seed=1)).items for v in source.videos]
    again = [backend.generate(v, QuestionSpec(seed=1)).items for v in source.videos]
    other = [backend.generate(v, QuestionSpec(seed=2)).items for v in source.videos]
    assert first == again
    assert first != other
    capped = backend.generate(source.videos[0], QuestionSpec(per_video=2, dialogues_per_video=0, types=("when",)))
    assert [i.qtype for i in capped.items] == ["when", "when"]


# Charades-STA as released: `VID start end##sentence` lines, and Charades_v1_*.csv with the
# duration in its last column, `length` (quoted fields hold commas). Quirks: windows that run
# past the end (clipped), one that starts after it (dropped), paraphrases of one window (one
# moment), a video missing from the CSV and one with an empty length (both dropped).
CHARADES_STA = """\
AO8RW 0.0 6.9##a person is putting a book on a shelf.
AO8RW 0.0 6.9##person begins by putting a book on the shelf.
AO8RW 7.3 15.2##the person takes a cup from the table.
AO8RW 20.1 36.4##person starts laughing.
Y6R7T 1.2 8.8##a person opens the fridge.
Y6R7T 9.0 14.5##the person drinks a glass of water.
Y6R7T 15.0 24.0##person closes the door.
Y6R7T 25.0 30.0##the person sits down.
KX3B7 3.4 11.0##person holding a pillow.
KX3B7 3.4 11.0##a person is holding a pillow.
KX3B7 12.0 19.6##person throws the pillow on the bed.
Z1Q9X 2.0 5.0##a person sneezes.
EMPTY 1.0 4.0##a person waves.
"""
CHARADES_CSV = """\
id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length
AO8RW,CP6Y,Living room,6,7,Yes,"A person puts a book away, takes a cup and laughs.",book;cup;shelf,"A person shelves a book, then laughs.",c026 0.00 7.10;c106 7.00 15.50,33.67
Y6R7T,M7K8,Kitchen,5,6,Yes,"A person opens the fridge, drinks water, closes the door.",door;glass;refrigerator,A person drinks water.,c143 1.00 9.00;c106 9.00 14.80,21.5
KX3B7,ZB4K,Bedroom,7,7,Yes,"A person holds a pillow, then throws it on the bed.",bed;pillow,A person throws a pillow.,c077 3.20 11.10,30.12
EMPTY,ZB4K,Bedroom,,,No,A person waves.,,,,
"""


def _charades_windows(sta: Path, lengths_csv: Path, videos: set[str]) -> dict[str, dict[int, tuple[float, float]]]:
    """The expected cleaned windows, computed here independently of the readers."""
    lengths = {}
    for line in lengths_csv.read_text().splitlines()[1:]:
        if line.rsplit(",", 1)[1]:
            lengths[line.split(",", 1)[0]] = float(line.rsplit(",", 1)[1])
    windows: dict[str, dict[int, tuple[float, float]]] = {}
    counters: Counter = Counter()
    for line in sta.read_text().splitlines():
        vid, start, end = line.split("##")[0].split()
        index = counters[vid]
        counters[vid] += 1
        if vid in videos:
            duration = round(lengths[vid], 3)
            windows.setdefault(vid, {})[index] = (round(max(0.0, float(start)), 3), round(min(duration, float(end)), 3))
    return windows


def test_charades_sta_template_small(tmp_path: Path) -> None:
    """The Charades-STA format without ../shared: a file in the released format, written here."""
    sta, lengths = tmp_path / "charades_sta_test.txt", tmp_path / "Charades_v1_test.csv"
    sta.write_text(CHARADES_STA, encoding="utf-8")
    lengths.write_text(CHARADES_CSV, encoding="utf-8")
    out = tmp_path / "charades_small.jsonl"
    summary = augment([f"input={sta}", "format=charades_sta", f"durations={lengths}", f"out={out}"])
    records = read_valid(out)
    videos = {r.meta["source_video"] for r in records}
    assert videos == {"AO8RW", "Y6R7T", "KX3B7"} and summary.videos_in_output == 3
    assert summary.source_fixes == {"duration_missing_dropped": 2, "window_end_clipped": 2, "window_outside_dropped": 1}
    check_grounding(records, _charades_windows(sta, lengths, videos))
    durations = {"AO8RW": 33.67, "Y6R7T": 21.5, "KX3B7": 30.12}
    assert all(r.duration == durations[r.meta["source_video"]] for r in records)
    spans = {span for r in records for span in r.spans}
    assert (20.1, 33.67) in spans and (15.0, 21.5) in spans  # clipped to the video, not as written
    assert {"when", "before", "after", "duration", "order", "dialogue"} <= set(summary.items_per_type)
    # paraphrases of one window are one moment: its "when" item names both lines as its source,
    # and asks about the first of them
    whens = [r for r in records if r.meta["question_type"] == "when"]
    assert any(r.meta["source_events"] == [[0, 1]] for r in whens)
    for rec in whens:
        lines = [ln for ln in CHARADES_STA.splitlines() if ln.startswith(rec.meta["source_video"] + " ")]
        sentence = lines[rec.meta["source_events"][0][0]].split("##")[1]
        assert inline_case(clean_sentence(sentence)) in rec.turns[0].content


def test_a_malformed_entry_stops_the_run_or_is_dropped_and_counted(anet_file: Path, tmp_path: Path) -> None:
    """One ActivityNet video with 2 timestamps and 1 sentence: named (file:video) by default; with
    on_bad_record=drop the other videos are generated and the drop is counted."""
    bad = tmp_path / "anet_bad.json"
    bad.write_text(json.dumps({**ANET, "v_odd": {"duration": 20, "timestamps": [[0, 5], [6, 9]], "sentences": ["A."]}}))
    with pytest.raises(SystemExit, match=r"anet_bad\.json:v_odd: 2 timestamps but 1 sentences"):
        augment([f"input={bad}", f"out={tmp_path / 'a.jsonl'}"])
    summary = augment([f"input={bad}", f"out={tmp_path / 'b.jsonl'}", "on_bad_record=drop"])
    assert summary.source_fixes["record_malformed_dropped"] == 1
    assert {r.meta["source_video"] for r in read_valid(tmp_path / "b.jsonl")} == set(ANET)
    sta, lengths = tmp_path / "sta.txt", tmp_path / "Charades_v1_test.csv"
    sta.write_text(CHARADES_STA + "AO8RW 1.0##no end time\n", encoding="utf-8")
    lengths.write_text(CHARADES_CSV, encoding="utf-8")
    summary = augment([f"input={sta}", "format=charades_sta", f"durations={lengths}", f"out={tmp_path / 'c.jsonl'}",
                       "on_bad_record=drop"])  # fmt: skip
    assert summary.source_fixes["record_malformed_dropped"] == 1 and summary.videos_in_output == 3


def test_charades_sta_template(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "charades_qa.jsonl"
    sta = shared_data / "charades_sta" / "charades_sta_test.txt"
    lengths = shared_data / "charades_sta" / "Charades_v1_test.csv"
    summary = augment([f"input={sta}", "format=charades_sta", f"durations={lengths}", f"out={out}", "limit=150"])
    records = read_valid(out)
    videos = {r.meta["source_video"] for r in records}
    assert summary.videos_in_output == 150 and len(videos) == 150
    check_grounding(records, _charades_windows(sta, lengths, videos))
    assert summary.source_fixes.get("window_end_clipped", 0) > 0  # real windows run past the end
    assert {"when", "before", "after", "order", "dialogue"} <= set(summary.items_per_type)
    # paraphrases of one window share it: a "when" item's source events are all its paraphrases
    assert any(len(r.meta["source_events"][0]) > 1 for r in records)


def test_charades_needs_durations(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="durations="):
        augment([f"input={shared_data / 'charades_sta' / 'charades_sta_test.txt'}", "format=charades_sta",
                 f"out={tmp_path / 'x.jsonl'}"])


def test_damo_jsonl_input(tmp_path: Path) -> None:
    source = tmp_path / "grounding.jsonl"
    write_jsonl(
        source,
        [
            Record("g0", "videos/a.mp4", 20.0, "grounding", ((1.0, 4.0),),
                   turns=(Turn("user", "When does the beep sound?"), Turn("assistant", "{span:0}")),
                   meta={"query": "a high beep sounds"}),
            Record("c0", "videos/a.mp4", 20.0, "caption", ((6.0, 12.0),), caption="A red square appears."),
            Record("c1", "videos/b.mp4", 9.0, "caption", caption="A whole-video caption has no span."),
        ],
    )
    out = tmp_path / "from_damo.jsonl"
    summary = augment([f"input={source}", "format=damo", f"out={out}"])
    records = read_valid(out)
    assert summary.videos_in_output == 1
    assert {r.video for r in records} == {"videos/a.mp4"}
    check_grounding(records, {"videos/a.mp4": {0: (1.0, 4.0), 1: (6.0, 12.0)}})
    orders = [r for r in records if r.meta["question_type"] == "order"]
    assert orders and all("high beep" in r.turns[1].content.lower() for r in orders)


def test_resume_refuses_an_edited_input_or_other_source_settings(anet_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed.jsonl"
    base = [f"input={anet_file}", f"out={out}"]
    first = augment(base + ["limit=1"])
    assert first.videos_done_now == 1
    # a larger limit on the same file, with the same settings, continues the output
    more = augment(base + ["limit=2"])
    assert more.videos_resumed == 1 and more.videos_done_now == 1

    # the rest with windows dropped instead of clipped: those videos would be cleaned otherwise
    with pytest.raises(SystemExit, match=r"other settings: source\.on_bad_window \(was 'clip', now 'drop'\)"):
        augment(base + ["on_bad_window=drop"])
    # one sentence edited in the input file (same path, same size)
    edited = json.loads(anet_file.read_text())
    edited["v_kitchen"]["sentences"][0] = "A woman chops garlic on a board."
    anet_file.write_text(json.dumps(edited))
    with pytest.raises(SystemExit, match=r"other settings: source\.input_sha256 \(was '[0-9a-f]{64}', now"):
        augment(base)
    assert {r.meta["source_video"] for r in read_valid(out)} == {"v_gym", "v_kitchen"}  # nothing was mixed in


@pytest.mark.parametrize("limit", ["-2", "0", "1.5", "many"])
def test_limit_is_a_number_of_videos(anet_file: Path, tmp_path: Path, limit: str) -> None:
    out = tmp_path / "limited.jsonl"
    with pytest.raises(SystemExit, match=rf"^damo-augment: limit={limit}: expected a whole number of videos >= 1"):
        augment([f"input={anet_file}", f"out={out}", f"limit={limit}"])
    assert not out.exists()
