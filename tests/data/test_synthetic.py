"""The synthetic generator: files decode and agree with their annotations, output is deterministic."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import av
import numpy as np
import pytest
from decord import VideoReader

from damo_lit.data.decode import load_audio
from damo_lit.data.prompts import conversation, encode
from damo_lit.data.schema import read_jsonl
from damo_lit.data.synthetic import (
    COLOURS,
    KINDS,
    SPLITS,
    SynthConfig,
    VideoPlan,
    generate,
    iter_plans,
    split_sizes,
    tone_band,
)

COLOUR_TOLERANCE = 60.0  # RGB distance after H.264 (yuv420p, crf 18) round trip
MIN_SHAPE_PIXELS = 40


def _records(out: Path, split: str):
    return [r for _, r in read_jsonl(out / "annotations" / f"{split}.jsonl")]


def _plans(cfg: SynthConfig) -> list[VideoPlan]:
    return list(iter_plans(cfg))


def _colour_pixels(frames: np.ndarray, colour: str) -> np.ndarray:
    """Per frame, how many pixels lie close to `colour`."""
    target = np.array(COLOURS[colour], dtype=np.float32)
    distance = np.linalg.norm(frames.astype(np.float32) - target, axis=-1)
    return (distance < COLOUR_TOLERANCE).sum(axis=(1, 2))


def _band_energy(wave: np.ndarray, band: tuple[float, float], rate: int = 16000, hop: float = 0.05):
    """Energy in a frequency band per 50 ms frame, and each frame's centre time."""
    n = int(rate * hop)
    frames = wave[: len(wave) // n * n].reshape(-1, n) * np.hanning(n)
    spectrum = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1 / rate)
    energy = spectrum[:, (freqs >= band[0]) & (freqs <= band[1])].sum(axis=1)
    return energy, (np.arange(len(energy)) + 0.5) * hop


def test_split_sizes_and_files(synth_dir):
    assert split_sizes(1000) == {"train": 800, "val": 100, "test": 100}
    assert split_sizes(20) == {"train": 16, "val": 2, "test": 2}
    names = sorted(p.name for p in (synth_dir / "videos").glob("*.mp4"))
    assert len(names) == 20
    assert not list((synth_dir / "videos").glob("*.partial.mp4"))
    manifest = json.loads((synth_dir / "synth.json").read_text())
    assert manifest["config"]["videos"] == 20 and manifest["config"]["seed"] == 3


def test_annotations_cover_every_task_and_match_the_plan(synth_dir, synth_config):
    plans = {p.video: p for p in _plans(synth_config)}
    for split in SPLITS:
        records = _records(synth_dir, split)
        assert all(not isinstance(r, Exception) for r in records), records
        by_video: dict[str, list] = {}
        for r in records:
            by_video.setdefault(r.video, []).append(r)
        assert len(by_video) == split_sizes(20)[split]
        for video, recs in by_video.items():
            plan = plans[video]
            tasks = [r.task for r in recs]
            assert tasks.count("caption") == 1 and tasks.count("dialogue") == 1
            assert tasks.count("grounding") == len(plan.events) and 2 <= len(plan.events) <= 4
            assert tasks.count("qa") >= 2
            assert 8 <= plan.duration <= 20
            for event in plan.events:
                assert 2.0 <= event.end - event.start <= 7.0
                assert 0 <= event.start < event.end <= plan.duration
            grounding = [r for r in recs if r.task == "grounding"]
            assert [r.spans[0] for r in grounding] == [(e.start, e.end) for e in plan.events]
            assert [r.modality for r in grounding] == [e.kind for e in plan.events]
            # a grounding question picks its event alone: shapes differ in colour, tones in pitch
            questions = [r.turns[0].content for r in grounding]
            assert len(set(questions)) == len(questions)
            colours = [e.colour for e in plan.events if e.visual]
            pitches = [e.pitch for e in plan.events if e.audible]
            assert len(set(colours)) == len(colours) and len(set(pitches)) == len(pitches)
            for r, event in zip(grounding, plan.events):
                if event.visual:
                    assert event.colour in r.turns[0].content and event.shape in r.turns[0].content
                if event.audible:
                    assert f"{event.pitch} {event.pattern} tone" in r.turns[0].content
                if event.kind == "audio":
                    assert not any(c in r.turns[0].content for c in COLOURS)
            dialogue = next(r for r in recs if r.task == "dialogue")
            assert 2 <= len(dialogue.turns) // 2 <= 3 and dialogue.turns[-1].role == "assistant"
            assert "{span:0}" in dialogue.turns[-1].content  # the evaluation span is spans[0]
            assert dialogue.spans[0] in [(e.start, e.end) for e in plan.events]
            caption = next(r for r in recs if r.task == "caption")
            assert caption.spans == tuple((e.start, e.end) for e in plan.events)
            if plan.audio == "none":
                assert all(e.kind == "visual" for e in plan.events)


def test_same_kind_events_never_overlap_and_shapes_on_screen_together_keep_apart():
    cfg = SynthConfig(videos=400, seed=11)
    kinds = set()
    together = 0
    for plan in iter_plans(cfg):
        for kind in KINDS:
            spans = sorted((e.start, e.end) for e in plan.events if e.kind == kind)
            assert all(b[0] >= a[1] + 0.5 - 1e-9 for a, b in zip(spans, spans[1:])), plan
        shapes = [e for e in plan.events if e.visual]
        for a, b in itertools.combinations(shapes, 2):
            if a.start < b.end and b.start < a.end:  # on screen at once: opposite corners of the path range
                together += 1
                top, bottom = (a, b) if a.kind == "visual" else (b, a)
                assert max(top.path) <= 0.3 + 1e-9 and min(bottom.path) >= 0.7 - 1e-9, plan
        kinds.update(e.kind for e in plan.events)
    assert together > 10
    assert kinds == {"visual", "audio", "audio-visual"}
    audio = [p.audio for p in iter_plans(cfg)]
    assert audio.count("none") == 40 and audio.count("stereo44k") == 80  # exact 10% / 20%


def test_decoded_pixels_agree_with_the_annotations(synth_dir, synth_config):
    for plan in _plans(synth_config):
        reader = VideoReader(str(synth_dir / plan.video))
        frames = reader.get_batch(list(range(len(reader)))).asnumpy()
        times = reader.get_frame_timestamp(list(range(len(reader))))[:, 0]
        assert frames.shape == (round(plan.duration * plan.fps), 64, 64, 3)
        np.testing.assert_allclose(times, np.arange(len(frames)) / plan.fps, atol=1e-3)
        visual_on = np.zeros(len(frames), dtype=bool)
        for event in plan.events:
            if not event.visual:
                continue
            inside = (times >= event.start) & (times < event.end)
            visual_on |= inside
            pixels = _colour_pixels(frames, event.colour)
            assert (pixels[inside] >= MIN_SHAPE_PIXELS).all(), (plan.video, event)
            assert (pixels[~inside] <= 3).all(), (plan.video, event)
        # nothing visual happens during an audio-only event: no shape colour on screen then
        for event in plan.events:
            if event.kind == "audio":
                quiet = (times >= event.start) & (times < event.end) & ~visual_on
                for colour in COLOURS:
                    assert (_colour_pixels(frames[quiet], colour) <= 3).all(), (plan.video, event, colour)


def test_tone_energy_lies_inside_its_window(synth_dir, synth_config):
    checked = 0
    for plan in _plans(synth_config):
        with av.open(str(synth_dir / plan.video)) as container:
            streams = container.streams.audio
            if plan.audio == "none":
                assert len(streams) == 0
                continue
            assert streams[0].rate == (44100 if plan.audio == "stereo44k" else 16000)
            assert streams[0].channels == (2 if plan.audio == "stereo44k" else 1)
        wave = load_audio(synth_dir / plan.video)
        assert wave is not None and wave.ndim == 1
        assert abs(len(wave) / 16000 - plan.duration) < 0.1
        for event in plan.events:
            if not event.audible:
                continue
            energy, t = _band_energy(wave, tone_band(event))
            peak = energy.max()
            inside = (t > event.start + 0.1) & (t < event.end - 0.1)
            outside = (t < event.start - 0.1) | (t > event.end + 0.1)
            # beeping tones are on half the time; every other pattern all the time
            assert (energy[inside] > 0.05 * peak).mean() >= 0.4, (plan.video, event)
            assert (energy[outside] < 0.01 * peak).all(), (plan.video, event)
            checked += 1
    assert checked >= 5


def test_same_seed_gives_identical_output_and_splits_are_disjoint(tmp_path, synth_dir, synth_config):
    # fewer processes, same seed: the same bytes of annotations and the same decoded pixels
    again = tmp_path / "again"
    generate(again, SynthConfig(videos=20, seed=3, workers=1))
    for split in SPLITS:
        first = (synth_dir / "annotations" / f"{split}.jsonl").read_bytes()
        assert first == (again / "annotations" / f"{split}.jsonl").read_bytes()
    for name in ("train_000000.mp4", "test_000001.mp4"):
        a = VideoReader(str(synth_dir / "videos" / name))
        b = VideoReader(str(again / "videos" / name))
        np.testing.assert_array_equal(a.get_batch(list(range(len(a)))).asnumpy(), b.get_batch(list(range(len(b)))).asnumpy())
    # another seed: other annotations
    other = list(iter_plans(SynthConfig(videos=20, seed=4)))
    assert [p.events for p in other] != [p.events for p in _plans(synth_config)]
    # disjoint splits: no video or record id in two splits, and each split has its own stream
    seen_videos: dict[str, str] = {}
    seen_ids: set[str] = set()
    for split in SPLITS:
        for r in _records(synth_dir, split):
            assert seen_videos.setdefault(r.video, split) == split
            assert r.id not in seen_ids
            seen_ids.add(r.id)
    plans = {(p.split, p.index): p for p in _plans(synth_config)}
    assert plans[("train", 0)].events != plans[("val", 0)].events != plans[("test", 0)].events


@pytest.mark.parametrize("fmt", ["relative", "seconds"])
def test_generated_text_tokenises_without_unknown_words(synth_dir, tokenizer, fmt):
    unk = tokenizer.unk_token_id
    for split in SPLITS:
        for record in _records(synth_dir, split):
            conv = conversation(record, fmt)
            encoded = encode(conv.turns, tokenizer, "plain")
            assert unk not in encoded.input_ids, (record.id, tokenizer.decode(encoded.input_ids))
            if conv.caption is not None:
                assert unk not in tokenizer(conv.caption)["input_ids"]


def test_the_picture_does_not_tell_when_an_audio_only_event_sounds():
    """Starts of audio-only and visual-only events of one video are uncorrelated (a layout that
    kept all sounds apart, or laid events out one after another, correlates them: 0.1 here)."""
    audio, visual = [], []
    for plan in iter_plans(SynthConfig(videos=1500, seed=3)):
        for a in (e for e in plan.events if e.kind == "audio"):
            for v in (e for e in plan.events if e.kind == "visual"):
                # each start as a share of the room it had, uniform on [0, 1] when drawn on its own
                audio.append(a.start / (plan.duration - (a.end - a.start)))
                visual.append(v.start / (plan.duration - (v.end - v.start)))
    assert len(audio) > 800
    assert abs(np.corrcoef(audio, visual)[0, 1]) < 0.05


def _ensure_after_barrier(out: str, params: dict, barrier, results) -> None:
    from damo_lit.data.synthetic import ensure_generated

    barrier.wait()
    results.put(ensure_generated(out, params) is not None)


def test_runs_started_side_by_side_generate_the_set_once(tmp_path):
    # two demo runs on a fresh clone (exp.jobs=2) both find no set: one generates, the other waits
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    out = tmp_path / "synthetic"
    params = {"videos": 6, "seed": 5, "workers": 1}
    procs = [context.Process(target=_ensure_after_barrier, args=(str(out), params, barrier, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert sorted(results.get(timeout=5) for _ in procs) == [False, True]  # generated by exactly one
    for split in SPLITS:
        for record in _records(out, split):
            assert VideoReader(str(out / record.video)).get_batch([0]).shape[0] == 1


def test_a_set_missing_a_video_is_not_taken_for_complete(tmp_path, caplog):
    """Training's data.generate renders again a video deleted from the set (was: the set was 'there')."""
    import logging

    from damo_lit.data.synthetic import absent_videos, ensure_generated

    out = tmp_path / "synthetic"
    params = {"videos": 4, "seed": 2, "workers": 1}
    assert ensure_generated(out, params) is not None
    cfg = SynthConfig(**params)
    assert absent_videos(out, cfg) == []
    before = (out / "videos" / "train_000001.mp4").read_bytes()
    (out / "videos" / "train_000001.mp4").unlink()
    assert absent_videos(out, cfg) == ["videos/train_000001.mp4"]
    with caplog.at_level(logging.WARNING, logger="damo_lit"):
        assert ensure_generated(out, params) is None  # the set was there: only its missing video is rendered
    assert (out / "videos" / "train_000001.mp4").read_bytes() == before
    assert "lacked 1 of its videos (videos/train_000001.mp4); rendered them again" in caplog.text
    (out / "videos" / "train_000002.mp4").unlink()
    with pytest.raises(ValueError, match=r"other parameters \(seed: 2 there, 3 asked\)"):
        ensure_generated(out, {**params, "seed": 3})  # another set asked: refused, nothing rendered
    assert not (out / "videos" / "train_000002.mp4").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seed", -1, "seed must be >= 0"),
        ("min_seconds", float("nan"), "min_seconds must be a finite number, got nan"),
        ("max_seconds", float("inf"), "max_seconds must be a finite number, got inf"),
        ("max_event_seconds", float("inf"), "max_event_seconds must be a finite number"),
        ("fps", 8.5, "fps must be a whole number, got 8.5"),
        ("size", "64", "size must be a whole number, got '64'"),
        ("workers", 0, "workers must be >= 1, got 0"),
        ("faults", "some", "faults must be a number, got 'some'"),
    ],
)
def test_synth_config_refuses_what_numpy_or_the_renderer_cannot_take(field, value, message):
    with pytest.raises(ValueError, match=message):
        SynthConfig(videos=2, **{field: value})


def test_data_generate_names_a_value_of_the_wrong_kind(tmp_path):
    """Hydra reads data.generate.videos=1e3 as a float (taken as 1000); a word failed deep in numpy,
    and was reported as an unknown key."""
    from damo_lit.data.synthetic import ensure_generated

    assert SynthConfig(videos=1e3).videos == 1000
    with pytest.raises(ValueError, match="^data.generate: videos must be a whole number, got '20'$"):
        ensure_generated(tmp_path / "set", {"videos": "20"})
    with pytest.raises(ValueError, match=r"^data.generate: .*unexpected keyword argument 'vidoes'"):
        ensure_generated(tmp_path / "set", {"vidoes": 20})
    assert not (tmp_path / "set").exists()


@pytest.mark.parametrize("fps, step", [(8, 0.25), (3, 1 / 3), (10, 0.3), (11, 3 / 11), (30, 8 / 30)])
def test_durations_and_event_bounds_are_whole_frames_inside_the_asked_range(fps, step):
    """At any frame rate the annotated duration is where the frames end, and never outside
    min_seconds..max_seconds (rounding 8.1-8.2 s to 0.25 s steps once gave 8.25)."""
    cfg = SynthConfig(videos=30, fps=fps, min_seconds=8.1, max_seconds=9.9)
    assert cfg.quantum == pytest.approx(step)
    for plan in iter_plans(cfg):
        assert 8.1 <= plan.duration <= 9.9
        frames = plan.duration * fps
        assert frames == pytest.approx(round(frames), abs=1e-6)
        for event in plan.events:
            for bound in (event.start, event.end):
                assert bound * fps == pytest.approx(round(bound * fps), abs=1e-6)
            assert event.end - event.start >= cfg.min_event_seconds - 1e-9
