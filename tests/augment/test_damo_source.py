"""format=damo: events out of DaMO JSONL caption and grounding records, and QA generated from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from damo_lit.augment.describe import caption_events, question_description
from damo_lit.augment.sources import load_videos, read_damo_events
from damo_lit.cli.augment import main
from damo_lit.data.schema import PLACEHOLDER, write_jsonl
from damo_lit.data.sources.events import VideoEvents
from damo_lit.data.synthetic import SynthConfig, annotate, plan_split, split_sizes
from damo_lit.metrics.spans import temporal_iou

from .helpers import check_grounding, read_valid


@pytest.fixture()
def synth_annotations(tmp_path: Path) -> Path:
    """The train split of a 12-video synthetic set, as `damo-data synth` writes it (without rendering
    the videos, which augmentation never opens): captions, grounding, qa and dialogue records."""
    cfg = SynthConfig(videos=12, seed=1)
    plans = plan_split(cfg, "train", split_sizes(cfg.videos)["train"])
    path = tmp_path / "annotations" / "train.jsonl"
    write_jsonl(path, [record for plan in plans for record in annotate(plan, cfg.seed)])
    return path


def test_synthetic_set_gives_valid_items(synth_annotations: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth_aug.jsonl"
    main([f"input={synth_annotations}", "format=damo", f"out={out}", "progress=false"])  # exit 0: no SystemExit

    source = read_damo_events(synth_annotations)
    videos = {events.video: events for events in source}
    records = read_valid(out)
    # 8 QA items and a dialogue per video were asked for; the synthetic videos have 2 to 4 events
    assert len(records) >= 4 * len(videos), len(records)
    assert {r.meta["source_video"] for r in records} == set(videos)
    windows = {v: dict(enumerate((s, e) for s, e, _ in events.events)) for v, events in videos.items()}
    check_grounding(records, windows)  # every span inside its video, equal to its source events' windows
    for rec in records:
        assert rec.video == rec.meta["source_video"] and rec.duration == videos[rec.video].duration
        for span, events in zip(rec.spans, rec.meta["source_events"]):
            assert events and temporal_iou([span], [windows[rec.video][i] for i in events]).min() > 0
        for turn in rec.turns:
            if turn.role == "user":
                assert "{" not in turn.content and "}" not in turn.content, turn
            else:
                assert "{" not in PLACEHOLDER.sub("", turn.content), turn  # only this record's own placeholders
                assert all(int(m.group(2)) < len(rec.spans) for m in PLACEHOLDER.finditer(turn.content))
    summary = json.loads((tmp_path / "synth_aug.jsonl.summary.json").read_text())
    assert summary["rejects"].get("bad_placeholder", 0) == 0
    assert summary["videos_done_now"] == len(videos) and summary["videos_failed"] == 0

    # the events read naturally: no placeholders, no paragraph ordering words
    for events in source:
        for _, _, text in events.events:
            assert "{" not in text and not text.lower().startswith(("first", "then", "finally", "when", "at what"))
    questions = {t.content for r in records for t in r.turns if t.role == "user"}
    assert any("appears" in q for q in questions)


HAND_MADE = [
    # a caption whose sentences refer to its spans; one sentence describes two spans; one none
    {"id": "c1", "video": "videos/a.mp4", "duration": 30.0, "task": "caption",
     "spans": [[0.0, 5.0], [6.0, 12.0], [12.0, 20.0]],
     "caption": "First, a man opens the door {span:0}. The room is dark. "
                "Then he walks in ({span:1}) and sits down {span:2}."},
    # the project's own grounding record (data sources): its query kept in meta
    {"id": "g1", "video": "videos/a.mp4", "duration": 30.0, "task": "grounding", "spans": [[21.0, 25.5]],
     "turns": [{"role": "user", "content": "when does this happen: a dog barks?"},
               {"role": "assistant", "content": "{span:0}."}],
     "meta": {"query": "A dog barks at the man."}},
    # synthetic grounding records: a question that states no event word for word; its span is
    # read from the video's caption (g6: c1's first span) or, described nowhere, skipped and counted
    {"id": "g6", "video": "videos/a.mp4", "duration": 30.0, "task": "grounding", "spans": [[0.0, 5.0]],
     "turns": [{"role": "user", "content": "when does the man open the door?"},
               {"role": "assistant", "content": "it happens {span:0}."}]},
    {"id": "g2", "video": "videos/a.mp4", "duration": 30.0, "task": "grounding", "spans": [[25.0, 29.0]],
     "turns": [{"role": "user", "content": "when does the red circle appear with the high beeping tone?"},
               {"role": "assistant", "content": "they occur {span:0}."}]},
    {"id": "g3", "video": "videos/b.mp4", "duration": 10.0, "task": "grounding", "spans": [[1.0, 4.0]],
     "turns": [{"role": "user", "content": "at what time can you hear the low steady tone?"},
               {"role": "assistant", "content": "it sounds {span:0}."}]},
    {"id": "g4", "video": "videos/b.mp4", "duration": 10.0, "task": "grounding", "spans": [[5.0, 6.0], [7.0, 9.0]],
     "turns": [{"role": "user", "content": "When does this happen: person opens a door?"},
               {"role": "assistant", "content": "{span:0} and {span:1}."}]},
    # a range written with start / end placeholders; a caption of one clip without placeholder
    {"id": "c2", "video": "videos/b.mp4", "duration": 10.0, "task": "caption", "spans": [[2.0, 8.0]],
     "caption": "From {start:0} to {end:0}, a cat sleeps on the sofa."},
    {"id": "c3", "video": "videos/b.mp4", "duration": 10.0, "task": "caption", "spans": [[0.0, 10.0]],
     "caption": "A quiet living room."},
    # not read: a question that names no event, a caption of two spans that says which is which
    # nowhere, qa and dialogue records (their answers refer to spans through other turns)
    {"id": "g5", "video": "videos/b.mp4", "duration": 10.0, "task": "grounding", "spans": [[3.0, 4.0]],
     "turns": [{"role": "user", "content": "what colour is the car?"},
               {"role": "assistant", "content": "red, {span:0}."}]},
    {"id": "c4", "video": "videos/b.mp4", "duration": 10.0, "task": "caption", "spans": [[0.0, 2.0], [3.0, 4.0]],
     "caption": "Two things happen."},
    {"id": "q1", "video": "videos/b.mp4", "duration": 10.0, "task": "qa", "spans": [[1.0, 4.0]],
     "turns": [{"role": "user", "content": "what happens first?"},
               {"role": "assistant", "content": "it sounds {span:0}."}]},
    {"id": "d1", "video": "videos/a.mp4", "duration": 30.0, "task": "dialogue", "spans": [[0.0, 5.0]],
     "turns": [{"role": "user", "content": "what happens first?"},
               {"role": "assistant", "content": "a door opens {span:0}."}]},
    # a video with nothing to read
    {"id": "q2", "video": "videos/c.mp4", "duration": 10.0, "task": "qa", "spans": [],
     "turns": [{"role": "user", "content": "how many events?"}, {"role": "assistant", "content": "two."}]},
]


def test_hand_made_file_gives_exactly_its_events(tmp_path: Path) -> None:
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in HAND_MADE))
    assert read_damo_events(path) == [
        VideoEvents("videos/a.mp4", 30.0, (
            (0.0, 5.0, "a man opens the door"),
            (6.0, 12.0, "he walks in and sits down"),
            (12.0, 20.0, "he walks in and sits down"),
            (21.0, 25.5, "A dog barks at the man."),
        )),
        VideoEvents("videos/b.mp4", 10.0, (
            (5.0, 6.0, "person opens a door"),
            (7.0, 9.0, "person opens a door"),
            (2.0, 8.0, "a cat sleeps on the sofa"),
            (0.0, 10.0, "A quiet living room"),
        )),
    ]
    source = load_videos(path, "damo")
    assert [v.video for v in source.videos] == ["videos/a.mp4", "videos/b.mp4"]
    # g2, g3 and g5 name spans that no caption describes either; g6's is c1's first span
    assert source.fixes == {"damo_span_undescribed_skipped": 2, "damo_question_unreadable_skipped": 3}
    moments = {m.span: m.sentences for m in source.videos[0].moments}
    assert moments[(21.0, 25.5)] == ("A dog barks at the man",)  # cleaned like every source sentence


@pytest.mark.parametrize(
    "caption, n, events, undescribed",
    [
        ("first, a blue cross appears {span:0}. then a red circle appears {span:1}. finally, a tone sounds {span:2}.",
         3, {0: "a blue cross appears", 1: "a red circle appears", 2: "a tone sounds"}, []),
        ("A man jumps. {span:0}. Next to the door, a dog waits {span:1}.", 2,
         {0: "A man jumps", 1: "Next to the door, a dog waits"}, []),
        ("A man opens the door {span:0}. He walks in {span:0}.", 1, {0: "A man opens the door; he walks in"}, []),
        ("He waits until {end:0}. A bird sings at {start:1}.", 3, {0: "He waits", 1: "A bird sings"}, [2]),
    ],
)
def test_caption_events(caption: str, n: int, events: dict[int, str], undescribed: list[int]) -> None:
    assert caption_events(caption, n) == (events, undescribed)


@pytest.mark.parametrize(
    "question, description",
    [
        ("When does this happen: person opens a door?", "person opens a door"),
        ("Find the moment in the video when a man jumps.", "a man jumps"),
        ("a man dives into the pool", "a man dives into the pool"),  # a query given as it is
        # wh-questions state no event word for word: no guessing at their grammar
        ("when does the blue cross appear?", None),
        ("at what time can you see the red square and hear the low rising tone?", None),
        ("when does the girl watch tv", None),
        ("what colour is the car?", None),
        ("when does {span:0} happen?", None),
    ],
)
def test_question_description(question: str, description: str | None) -> None:
    assert question_description(question) == description
