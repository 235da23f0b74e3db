"""The embedded synthetic audio-visual grounding set: real MP4 files with known events.

Each video is 8-20 s of a plain or mildly noisy background with 2-4 events of 2-7 s:

- visual: a coloured shape appears and moves (nothing audible changes);
- audio: a tone with a pitch and a pattern sounds (nothing visible changes);
- audio-visual: a shape and a tone at once.

So that the picture never gives an audio answer away (and vice versa), every event's start is
drawn on its own (only events of the same kind are kept apart), and an audio-only event changes
no pixel. Two shapes (a visual and an audio-visual event) or two tones may then overlap in
time: colours and pitches are unique within a video, and overlapping shapes move in opposite
corners of the frame, so that neither hides the other. Within one video every shape has
its own colour and every tone its own pitch, so that a question naming them ("when does the
red square appear?", "when do you hear the high beeping tone?") picks exactly one event.

About 10% of the videos have no audio stream at all and about 20% have 44.1 kHz stereo audio
instead of 16 kHz mono (an exact share per split, by a seeded permutation).

Fault injection (`faults`, a share of each split's videos, for reliability tests): a faulty
video is garbage bytes, a zero-byte file, missing (its annotations kept, the file never
written) or an MP4 whose audio stream was left out (annotations as planned, so its audio
questions cannot be heard: a good sample with `has_audio` False). The kinds take turns over a
seeded choice of videos; the manifest (`synth.json`, key `faults`) names each faulty video and
its kind (`read_faults`).

Generation is deterministic: a video's plan and its noise come from a seed stream of
(seed, split, index), so the same seed gives byte-identical annotations and the same pixels,
whatever the number of worker processes. The plan is made in the parent process; workers
(a 'forkserver' pool, never fork) only render MP4s.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from damo_lit.data.decode import worker_context
from damo_lit.data.schema import Record, Turn, write_jsonl
from damo_lit.locks import folder_lock

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_SHARE = {"val": 0.1, "test": 0.1}  # train takes the rest
KINDS = ("visual", "audio", "audio-visual")

# Colours are far apart in RGB and survive yuv420p chroma subsampling on 64x64 frames.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (235, 225, 30),
    "purple": (170, 40, 220),
    "white": (245, 245, 245),
}
SHAPES = ("square", "circle", "triangle", "cross")
PITCHES: dict[str, float] = {"low": 300.0, "middle": 600.0, "high": 1200.0}  # an octave apart
PATTERNS = ("steady", "beeping", "rising", "falling")
GLIDE_OCTAVES = 2.0 / 3.0  # rising/falling tones glide +-1/3 octave: pitch bands stay disjoint
AUDIO_KINDS = ("mono16k", "stereo44k", "none")
AUDIO_RATE = {"mono16k": 16000, "stereo44k": 44100}
TONE_AMPLITUDE = 0.3
QUANTUM = 0.25  # event boundaries and durations are multiples of about this: whole frames (2 at 8 fps)
MIN_GAP = 0.5  # seconds between two events on the same channel
CORNER = 0.3  # overlapping shapes keep to opposite corners: this share of the path range each
PLACE_ATTEMPTS = 400
# Bumped whenever the same config would give other videos: 2 = events of different kinds placed
# independently (1 laid them out one after another, which let the picture hint at audio times).
LAYOUT_VERSION = 2  # random placements tried per event set before another set is drawn
BEEP_PERIOD = 0.4  # beeping: 0.2 s on, 0.2 s off
# Fault kinds of `SynthConfig.faults`, in the order they take turns. The first three cannot be
# decoded; a video without its audio stream decodes (audio marked absent).
FAULT_KINDS = ("garbage", "empty", "missing", "no_audio")
UNDECODABLE_FAULTS = ("garbage", "empty", "missing")
GARBAGE_BYTES = 4096

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
VISUAL_QUESTIONS = ("when does the {visual} appear?", "at what time can you see the {visual}?")
AUDIO_QUESTIONS = ("when do you hear the {audio}?", "at what time does the {audio} sound?")
AV_QUESTIONS = (
    "when does the {visual} appear with the {audio}?",
    "at what time can you see the {visual} and hear the {audio}?",
)
ANSWERS = {"visual": "it appears {span:0}.", "audio": "it sounds {span:0}.", "audio-visual": "they occur {span:0}."}


@dataclass(frozen=True)
class SynthConfig:
    """Generation parameters (conf/data/synthetic.yaml `generate:` holds the same keys)."""

    videos: int = 1000
    seed: int = 0
    fps: int = 8
    size: int = 64
    min_seconds: float = 8.0
    max_seconds: float = 20.0
    min_events: int = 2
    max_events: int = 4
    min_event_seconds: float = 2.0
    max_event_seconds: float = 7.0
    workers: int = 2
    faults: float = 0.0  # share of each split's videos made faulty (FAULT_KINDS), for reliability tests

    def __post_init__(self) -> None:
        # Kinds first: a word or a fraction where a count goes (Hydra reads 1e3 as a float) failed
        # deep in numpy or in a render worker, after the annotations were written.
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and isinstance(value, float) and value.is_integer():
                object.__setattr__(self, f.name, int(value))  # 1e3 -> 1000
            elif f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{f.name} must be a whole number, got {value!r}")
            elif f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in ("min_seconds", "max_seconds", "min_event_seconds", "max_event_seconds", "faults"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.videos < 1:
            raise ValueError(f"videos must be >= 1, got {self.videos}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (numpy's seeds are not negative), got {self.seed}")
        if not 0.0 <= self.faults <= 1.0:
            raise ValueError(f"faults is a share of the videos and must lie in [0, 1], got {self.faults}")
        if not 8 <= self.size <= 1024 or self.fps < 1:
            raise ValueError(f"size must be 8-1024 and fps >= 1, got size={self.size} fps={self.fps}")
        if self.size % 2:
            raise ValueError(f"size must be even (H.264 video in yuv420p has even sides), got {self.size}")
        if not 0 < self.min_event_seconds <= self.max_event_seconds:
            raise ValueError("need 0 < min_event_seconds <= max_event_seconds")
        if not 1 <= self.min_events <= self.max_events <= 4:
            raise ValueError("need 1 <= min_events <= max_events <= 4")
        if self.max_seconds < self.min_seconds or self.min_seconds < self.min_event_seconds * 2 + MIN_GAP:
            raise ValueError(
                f"min_seconds ({self.min_seconds}) must be <= max_seconds ({self.max_seconds}) and leave room for two "
                f"events of min_event_seconds ({self.min_event_seconds})"
            )
        if self.steps_down(self.max_seconds) < self.steps_up(self.min_seconds):
            raise ValueError(
                f"min_seconds ({self.min_seconds}) to max_seconds ({self.max_seconds}) holds no whole number of "
                f"{self.quantum:.4g} s steps (durations are whole frames at {self.fps} fps, in steps of about "
                f"{QUANTUM} s)"
            )

    @property
    def quantum(self) -> float:
        """The step of event boundaries and durations: whole frames, about QUANTUM seconds (exactly
        QUANTUM at 8 fps), so that a video's frames end where its annotated duration does."""
        return math.ceil(QUANTUM * self.fps - 1e-9) / self.fps

    def quantize(self, value: float) -> float:
        return round(value / self.quantum) * self.quantum

    def steps_up(self, value: float) -> float:
        """The least whole number of steps >= `value` (seconds)."""
        return math.ceil(value / self.quantum - 1e-9) * self.quantum

    def steps_down(self, value: float) -> float:
        """The greatest whole number of steps <= `value` (seconds)."""
        return math.floor(value / self.quantum + 1e-9) * self.quantum

    def draw_duration(self, rng: np.random.Generator) -> float:
        """A video duration, a whole number of steps inside [min_seconds, max_seconds]."""
        drawn = self.quantize(rng.uniform(self.min_seconds, self.max_seconds))
        return min(max(drawn, self.steps_up(self.min_seconds)), self.steps_down(self.max_seconds))


@dataclass(frozen=True)
class SynthEvent:
    """One planned event; the visual fields are None for audio events and vice versa."""

    kind: str
    start: float
    end: float
    colour: str | None = None
    shape: str | None = None
    pitch: str | None = None
    pattern: str | None = None
    path: tuple[float, float, float, float] | None = None  # shape centre moves (x0, y0) -> (x1, y1), in [0, 1]

    @property
    def visual(self) -> bool:
        return self.kind in ("visual", "audio-visual")

    @property
    def audible(self) -> bool:
        return self.kind in ("audio", "audio-visual")

    def visual_phrase(self) -> str:
        return f"{self.colour} {self.shape}"

    def audio_phrase(self) -> str:
        return f"{self.pitch} {self.pattern} tone"

    def description(self) -> str:
        """What happens, as a clause: 'a red square appears', 'a low steady tone sounds', ..."""
        if self.kind == "visual":
            return f"a {self.visual_phrase()} appears"
        if self.kind == "audio":
            return f"a {self.audio_phrase()} sounds"
        return f"a {self.visual_phrase()} appears with a {self.audio_phrase()}"


@dataclass(frozen=True)
class VideoPlan:
    """Everything needed to render one video and write its annotations."""

    split: str
    index: int
    duration: float
    fps: int
    size: int
    audio: str  # one of AUDIO_KINDS
    background: tuple[int, int, int]
    noise_std: float  # per-pixel frame noise (0: plain background)
    audio_noise: float  # amplitude of the faint white noise in the audio
    render_seed: tuple[int, ...]
    events: tuple[SynthEvent, ...]  # sorted by start
    fault: str | None = None  # one of FAULT_KINDS: how the rendered file is broken (None: it is not)

    @property
    def name(self) -> str:
        return Path(self.video).stem

    @property
    def video(self) -> str:
        return video_file(self.split, self.index)


def video_file(split: str, index: int) -> str:
    """Where video `index` of `split` lies in the set's folder, without planning it."""
    return f"videos/{split}_{index:06d}.mp4"


# --------------------------------------------------------------------------------------------
# planning (parent process, cheap, deterministic)


def split_sizes(videos: int) -> dict[str, int]:
    """80/10/10 of `videos` (val and test rounded, train the rest)."""
    val = int(round(videos * SPLIT_SHARE["val"]))
    test = int(round(videos * SPLIT_SHARE["test"]))
    return {"train": videos - val - test, "val": val, "test": test}


def _audio_kind(position: int) -> str:
    """Exact shares per split: position (in a seeded permutation) % 10 == 0 -> none, 1-2 -> stereo."""
    slot = position % 10
    return "none" if slot == 0 else "stereo44k" if slot in (1, 2) else "mono16k"


def _apart(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two windows at least MIN_GAP apart."""
    return a[1] + MIN_GAP <= b[0] + 1e-9 or b[1] + MIN_GAP <= a[0] + 1e-9


def _place(
    rng: np.random.Generator, kinds: list[str], duration: float, cfg: SynthConfig
) -> list[tuple[float, float]] | None:
    """Start/end per event, or None when they cannot fit: events of one kind never overlap.

    Every event's start is drawn uniformly over the video on its own, and a draw is kept only
    when events of the same kind are MIN_GAP apart (rejection sampling). Events of different
    kinds are independent, so the picture says nothing about when an audio-only event sounds
    (a rule like "sounds never overlap" would: an audio-only tone could then never sound during
    a visible audio-visual event). Lengths shrink after repeated misfits.
    """
    shortest = cfg.steps_up(cfg.min_event_seconds)  # whole steps, >= the minimum
    lengths = [max(shortest, cfg.quantize(rng.uniform(cfg.min_event_seconds, cfg.max_event_seconds))) for _ in kinds]
    pairs = [(i, j) for i in range(len(kinds)) for j in range(i + 1, len(kinds)) if kinds[i] == kinds[j]]
    for attempt in range(PLACE_ATTEMPTS):
        if attempt and attempt % (PLACE_ATTEMPTS // 4) == 0:
            lengths = [max(shortest, cfg.quantize(length * 0.8)) for length in lengths]
        if any(length > duration for length in lengths):
            continue
        starts = [cfg.quantize(rng.uniform(0.0, duration - length)) for length in lengths]
        spans = [(start, start + length) for start, length in zip(starts, lengths)]
        if all(_apart(spans[i], spans[j]) for i, j in pairs):
            return spans
    return None


def _shares_screen(kind: str, span: tuple[float, float], other_kind: str, other: tuple[float, float]) -> bool:
    """A shape of another kind on screen at the same time (same-kind events never overlap)."""
    both_visual = kind != "audio" and other_kind != "audio"
    return both_visual and kind != other_kind and span[0] < other[1] and other[0] < span[1]


def _corner(path: np.ndarray, kind: str) -> np.ndarray:
    """Confine a path (x0, y0, x1, y1 in [0, 1]) to its kind's corner: visual events top-left,
    audio-visual ones bottom-right, so that two shapes on screen at once never touch."""
    return path * CORNER + (0.0 if kind == "visual" else 1.0 - CORNER)


def _max_per_channel(duration: float, cfg: SynthConfig) -> int:
    """How many minimal events of one kind fit with the required gaps."""
    return int((duration + MIN_GAP) // (cfg.min_event_seconds + MIN_GAP))


def plan_video(cfg: SynthConfig, split: str, index: int, position: int) -> VideoPlan:
    """Plan one video from its own seed stream (seed, split, index)."""
    split_code = SPLITS.index(split)
    rng = np.random.default_rng([cfg.seed, split_code, index])
    duration = cfg.draw_duration(rng)
    audio = _audio_kind(position)
    fit = _max_per_channel(duration, cfg)
    spans = None
    while spans is None:
        n_events = int(rng.integers(cfg.min_events, cfg.max_events + 1))
        if audio == "none":
            kinds = ["visual"] * n_events
        else:
            kinds = [KINDS[int(i)] for i in rng.integers(0, 3, size=n_events)]
        n_visual = sum(k != "audio" for k in kinds)
        n_audible = sum(k != "visual" for k in kinds)
        if max(kinds.count(k) for k in kinds) <= fit and n_visual <= len(COLOURS) and n_audible <= len(PITCHES):
            spans = _place(rng, kinds, duration, cfg)
    colours = list(rng.permutation(list(COLOURS)))
    pitches = list(rng.permutation(list(PITCHES)))
    events = []
    for kind, (start, end) in zip(kinds, spans):
        fields: dict[str, Any] = {}
        if kind != "audio":
            fields["colour"] = str(colours.pop())
            fields["shape"] = SHAPES[int(rng.integers(len(SHAPES)))]
            path = rng.uniform(0.0, 1.0, size=4)
            if any(_shares_screen(kind, (start, end), k, span) for k, span in zip(kinds, spans)):
                path = _corner(path, kind)
            fields["path"] = tuple(round(float(v), 3) for v in path)
        if kind != "visual":
            fields["pitch"] = str(pitches.pop())
            fields["pattern"] = PATTERNS[int(rng.integers(len(PATTERNS)))]
        events.append(SynthEvent(kind, start, end, **fields))
    events.sort(key=lambda e: (e.start, e.end))
    noisy = bool(rng.random() < 0.5)
    grey = int(rng.integers(20, 80))
    tint = rng.integers(-10, 11, size=3)
    background = tuple(int(np.clip(grey + t, 0, 255)) for t in tint)
    return VideoPlan(
        split=split,
        index=index,
        duration=duration,
        fps=cfg.fps,
        size=cfg.size,
        audio=audio,
        background=background,  # type: ignore[arg-type]
        noise_std=float(rng.uniform(3.0, 8.0)) if noisy else 0.0,
        audio_noise=float(rng.uniform(0.002, 0.008)),
        render_seed=(cfg.seed, split_code, index, 1),
        events=tuple(events),
    )


def plan_split(cfg: SynthConfig, split: str, count: int) -> list[VideoPlan]:
    """Plan `count` videos of one split; audio kinds follow a seeded permutation of the split."""
    positions = np.random.default_rng([cfg.seed, SPLITS.index(split), 1 << 30]).permutation(count)
    return with_faults([plan_video(cfg, split, i, int(positions[i])) for i in range(count)], cfg)


def with_faults(plans: list[VideoPlan], cfg: SynthConfig) -> list[VideoPlan]:
    """Mark round(cfg.faults x len(plans)) of one split's videos faulty, the kinds taking turns over
    a seeded order of the videos (a 'no_audio' fault goes to a video that has audio)."""
    count = int(math.floor(cfg.faults * len(plans) + 0.5))
    if not count:
        return plans
    split_code = SPLITS.index(plans[0].split)
    order = [int(i) for i in np.random.default_rng([cfg.seed, split_code, 0xFA17]).permutation(len(plans))]
    out = list(plans)
    for turn in range(count):
        kind = FAULT_KINDS[turn % len(FAULT_KINDS)]
        pick = next((i for i in order if kind != "no_audio" or plans[i].audio != "none"), None)
        if pick is None:
            continue
        order.remove(pick)
        out[pick] = replace(plans[pick], fault=kind)
    return out


# --------------------------------------------------------------------------------------------
# annotations


def _event_meta(event: SynthEvent) -> dict[str, Any]:
    return {k: v for k, v in asdict(event).items() if v is not None and k not in ("start", "end", "path")}


def _question(event: SynthEvent, rng: np.random.Generator) -> str:
    templates = {"visual": VISUAL_QUESTIONS, "audio": AUDIO_QUESTIONS, "audio-visual": AV_QUESTIONS}[event.kind]
    template = templates[int(rng.integers(len(templates)))]
    return template.format(
        visual=event.visual_phrase() if event.visual else "", audio=event.audio_phrase() if event.audible else ""
    )


def annotate(plan: VideoPlan, seed: int) -> list[Record]:
    """All records of one video: a caption, a grounding query per event, QA, one dialogue."""
    rng = np.random.default_rng([seed, SPLITS.index(plan.split), plan.index, 2])
    events = plan.events
    all_spans = tuple((e.start, e.end) for e in events)
    base = f"synth-{plan.split}-{plan.index:06d}"
    meta_video = {"audio": plan.audio}

    def record(suffix: str, task: str, spans: Sequence[tuple[float, float]], turns=(), **kw: Any) -> Record:
        return Record(
            id=f"{base}-{suffix}",
            video=plan.video,
            duration=plan.duration,
            task=task,
            spans=tuple(spans),
            turns=tuple(Turn(r, c) for r, c in turns),
            **kw,
        )

    clauses = [f"{e.description()} {{span:{i}}}" for i, e in enumerate(events)]
    caption = "first, " + clauses[0] + "."
    for clause in clauses[1:-1]:
        caption += " then " + clause + "."
    if len(clauses) > 1:
        caption += " finally, " + clauses[-1] + "."
    out = [
        record(
            "caption",
            "caption",
            all_spans,
            caption=caption,
            meta={**meta_video, "events": [_event_meta(e) for e in events]},
        )
    ]
    for i, event in enumerate(events):
        out.append(
            record(
                f"g{i}",
                "grounding",
                [(event.start, event.end)],
                [("user", _question(event, rng)), ("assistant", ANSWERS[event.kind])],
                modality=event.kind,
                meta={**meta_video, "event": _event_meta(event)},
            )
        )
    count = COUNT_WORDS[len(events)] + (" event." if len(events) == 1 else " events.")
    has_tone = any(e.audible for e in events)
    out.append(record("qa0", "qa", [], [("user", "how many events happen in the video?"), ("assistant", count)]))
    out.append(
        record("qa1", "qa", [all_spans[0]], [("user", "what happens first?"), ("assistant", events[0].description() + " {span:0}.")])
    )
    out.append(
        record("qa2", "qa", [all_spans[-1]], [("user", "what happens last?"), ("assistant", events[-1].description() + " {span:0}.")])
    )
    tone_answer = "yes." if has_tone else ("no, the video has no sound." if plan.audio == "none" else "no.")
    out.append(record("qa3", "qa", [], [("user", "do you hear a tone?"), ("assistant", tone_answer)]))

    # Dialogue: the final answer's span is spans[0] (the evaluation span); the first event is spans[1].
    target = int(rng.integers(len(events)))
    spans = [all_spans[target]]
    first_ref = "{span:0}"
    if target != 0:
        spans.append(all_spans[0])
        first_ref = "{span:1}"
    turns: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        turns += [("user", "how many events happen in the video?"), ("assistant", count)]
    turns += [("user", "what happens first?"), ("assistant", f"{events[0].description()} {first_ref}.")]
    turns += [("user", "and " + _question(events[target], rng)), ("assistant", ANSWERS[events[target].kind])]
    out.append(
        record(
            "dialogue",
            "dialogue",
            spans,
            turns,
            modality=events[target].kind,
            meta={**meta_video, "event": _event_meta(events[target])},
        )
    )
    return out


# --------------------------------------------------------------------------------------------
# rendering (worker processes)


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    if size not in _GRIDS:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        _GRIDS[size] = (yy, xx)
    yy, xx = _GRIDS[size]
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        side = radius * 0.85
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":
        return (dy >= -radius) & (dy <= radius * 0.8) & (np.abs(dx) <= (dy + radius) * 0.6)
    if shape == "cross":
        arm = radius / 3.0
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= radius)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
    raise ValueError(f"unknown shape {shape!r}")


def render_frames(plan: VideoPlan) -> np.ndarray:
    """All frames (T, H, W, 3) uint8: background (+ noise) and the visible shape at each frame time."""
    rng = np.random.default_rng(list(plan.render_seed))
    n = int(round(plan.duration * plan.fps))
    size = plan.size
    frames = np.empty((n, size, size, 3), dtype=np.uint8)
    base = np.array(plan.background, dtype=np.float32)
    radius = size * 0.14
    visual = [e for e in plan.events if e.visual]
    for k in range(n):
        img = np.broadcast_to(base, (size, size, 3)).copy()
        if plan.noise_std > 0:
            img += rng.normal(0.0, plan.noise_std, size=(size, size, 1)).astype(np.float32)
        t = k / plan.fps
        for event in visual:
            if event.start <= t < event.end:
                assert event.path is not None and event.shape is not None and event.colour is not None
                frac = (t - event.start) / (event.end - event.start)
                x0, y0, x1, y1 = event.path
                lo, hi = radius + 1, size - radius - 2
                cx = lo + (x0 + (x1 - x0) * frac) * (hi - lo)
                cy = lo + (y0 + (y1 - y0) * frac) * (hi - lo)
                img[_shape_mask(event.shape, size, cx, cy, radius)] = COLOURS[event.colour]
        frames[k] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def tone(event: SynthEvent, sample_rate: int) -> np.ndarray:
    """The tone of one audible event, float32 samples over its own span."""
    assert event.pitch is not None and event.pattern is not None
    n = int(round((event.end - event.start) * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    base = PITCHES[event.pitch]
    frac = t / max(t[-1], 1e-9)
    if event.pattern == "rising":
        freq = base * 2.0 ** ((frac - 0.5) * GLIDE_OCTAVES)
    elif event.pattern == "falling":
        freq = base * 2.0 ** ((0.5 - frac) * GLIDE_OCTAVES)
    else:
        freq = np.full_like(t, base)
    signal = np.sin(2 * np.pi * np.cumsum(freq) / sample_rate)
    ramp = max(1, int(0.005 * sample_rate))  # 5 ms ramps: no clicks that smear energy out of the span
    if event.pattern == "beeping":
        # distance (in samples) to the nearest on/off edge, inside the 'on' half-periods
        phase = t % BEEP_PERIOD
        on = phase < BEEP_PERIOD / 2
        to_edge = np.minimum(phase, BEEP_PERIOD / 2 - phase) * sample_rate
        envelope = np.where(on, np.minimum(1.0, (to_edge + 1) / ramp), 0.0)
    else:
        envelope = np.ones_like(t)
    fade = np.minimum(1.0, np.minimum(np.arange(n) + 1, np.arange(n)[::-1] + 1) / ramp)
    return (TONE_AMPLITUDE * signal * envelope * fade).astype(np.float32)


def render_audio(plan: VideoPlan) -> tuple[np.ndarray, int] | None:
    """(channels, samples) float32 and the sample rate, or None for a video without audio."""
    if plan.audio == "none":
        return None
    rate = AUDIO_RATE[plan.audio]
    rng = np.random.default_rng(list(plan.render_seed) + [7])
    n = int(round(plan.duration * rate))
    mono = (rng.standard_normal(n) * plan.audio_noise).astype(np.float32)
    for event in plan.events:
        if event.audible:
            samples = tone(event, rate)
            start = int(round(event.start * rate))
            mono[start : start + len(samples)] += samples[: n - start]
    if plan.audio == "stereo44k":
        return np.stack([mono, mono * 0.8]), rate
    return mono[None, :], rate


def write_mp4(path: Path, frames: np.ndarray, fps: int, audio: tuple[np.ndarray, int] | None) -> None:
    """Encode H.264 (yuv420p, one thread: deterministic) and AAC with PyAV into `path`."""
    import av

    tmp = path.with_name(path.stem + ".partial.mp4")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "ultrafast"})
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        vstream.codec_context.thread_count = 1
        vstream.codec_context.time_base = Fraction(1, fps)
        astream = None
        if audio is not None:
            samples, rate = audio
            # the 'fast' AAC coder and a modest bit rate cut encoding time (the larger part of
            # generation) by more than half; tones and faint noise need no better
            bit_rate = "32k" if samples.shape[0] == 1 else "48k"
            astream = container.add_stream("aac", rate=rate, options={"aac_coder": "fast", "b": bit_rate})
            astream.layout = "mono" if samples.shape[0] == 1 else "stereo"
            astream.codec_context.time_base = Fraction(1, rate)
        for k, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = k
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None and audio is not None:
            samples, rate = audio
            layout = "mono" if samples.shape[0] == 1 else "stereo"
            chunk = 1024
            for offset in range(0, samples.shape[1], chunk):
                part = np.ascontiguousarray(samples[:, offset : offset + chunk])
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout=layout)
                frame.sample_rate = rate
                frame.pts = offset
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    tmp.replace(path)


def render_plan(plan: VideoPlan, out_dir: str) -> str:
    """Render one planned video to out_dir/videos/NAME.mp4 (worker entry point), broken as its
    `fault` says."""
    path = Path(out_dir) / plan.video
    if plan.fault == "missing":
        path.unlink(missing_ok=True)
    elif plan.fault == "empty":
        path.write_bytes(b"")
    elif plan.fault == "garbage":
        rng = np.random.default_rng(list(plan.render_seed) + [13])
        path.write_bytes(rng.integers(0, 256, size=GARBAGE_BYTES, dtype=np.uint8).tobytes())
    else:
        audio = None if plan.fault == "no_audio" else render_audio(plan)
        write_mp4(path, render_frames(plan), plan.fps, audio)
    return str(path)


# --------------------------------------------------------------------------------------------
# the whole set


@dataclass(frozen=True)
class SynthResult:
    out: Path
    videos: int
    records: dict[str, int]  # per split


def _ignore_interrupts() -> None:
    """Render workers leave Ctrl-C to the parent, which stops them in order (no traceback per worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _render_all(plans: list[VideoPlan], out: Path, workers: int) -> None:
    """Render `plans` with a progress bar. Ctrl-C stops after the videos being rendered (each is
    written whole or not at all), says how far it got and raises KeyboardInterrupt."""
    from rich.console import Console
    from rich.progress import Progress

    if not plans:
        return
    workers = max(1, min(workers, os.cpu_count() or 1, len(plans)))
    with Progress(transient=False, console=Console(stderr=True)) as progress:  # stdout: what was written
        task = progress.add_task(f"rendering {len(plans)} videos", total=len(plans))
        try:
            if workers <= 1:
                for plan in plans:
                    render_plan(plan, str(out))
                    progress.advance(task)
                return
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=worker_context(), initializer=_ignore_interrupts)
            try:
                chunk = max(1, min(16, len(plans) // (workers * 4)))
                for _ in pool.map(render_plan, plans, [str(out)] * len(plans), chunksize=chunk):
                    progress.advance(task)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:
            done = sum((out / plan.video).is_file() for plan in plans)  # workers finish what they hold
            progress.console.print(f"interrupted with {done} of {len(plans)} videos rendered; they stay in {out}, "
                                   "and the same command continues from there", soft_wrap=True)
            raise


def manifest_path(out: str | Path) -> Path:
    return Path(out) / "synth.json"


def partial_manifest_path(out: str | Path) -> Path:
    """What an unfinished generation is making (written first, removed when synth.json is written):
    a later run with the same parameters keeps the videos already rendered."""
    return Path(out) / "synth.partial.json"


def _config_differences(config: Mapping[str, Any], cfg: SynthConfig) -> dict[str, tuple[Any, Any]]:
    """Per parameter, (recorded, asked) where a recorded config differs from `cfg` (workers change
    no byte; a key recorded before it existed counts as its default)."""
    defaults = {f.name: f.default for f in fields(SynthConfig)}
    wanted = asdict(cfg)
    there = {k: config.get(k, defaults[k]) for k in wanted}
    return {k: (there[k], wanted[k]) for k in sorted(wanted) if k != "workers" and there[k] != wanted[k]}


def unfinished_matches(out: str | Path, cfg: SynthConfig) -> bool:
    """True when `out` holds an unfinished generation of exactly this set (same layout and
    parameters): generating `cfg` there continues it."""
    path = partial_manifest_path(out)
    if is_generated(out) or not path.is_file():
        return False
    try:
        partial = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return partial.get("layout") == LAYOUT_VERSION and not _config_differences(partial.get("config", {}), cfg)


def rendered_videos(out: str | Path, plans: Sequence[VideoPlan]) -> set[str]:
    """The plans' sound videos already written in `out` (a file is renamed into place whole).
    Broken ones are cheap and always written again."""
    out = Path(out)
    return {plan.video for plan in plans if plan.fault in (None, "no_audio") and (out / plan.video).is_file()}


def generate(out: str | Path, cfg: SynthConfig) -> SynthResult:
    """Write out/videos/*.mp4 and out/annotations/{train,val,test}.jsonl (and out/synth.json).

    The manifest is written last and removed first, so that a run cut short never leaves a set
    that `is_generated` takes for finished under an older manifest. A run cut short leaves
    synth.partial.json; generating the same parameters there again keeps its rendered videos."""
    out = Path(out)
    resuming = unfinished_matches(out, cfg)
    manifest_path(out).unlink(missing_ok=True)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    for leftover in (out / "videos").glob("*.partial.mp4"):
        leftover.unlink()
    header = {"generator": "damo_lit.data.synthetic", "layout": LAYOUT_VERSION, "config": asdict(cfg)}
    partial_manifest_path(out).write_text(json.dumps(header, indent=2, sort_keys=True) + "\n")
    plans: list[VideoPlan] = []
    counts: dict[str, int] = {}
    for split, count in split_sizes(cfg.videos).items():
        split_plans = plan_split(cfg, split, count)
        plans += split_plans
        records = [r for plan in split_plans for r in annotate(plan, cfg.seed)]
        counts[split] = write_jsonl(out / "annotations" / f"{split}.jsonl", records)
    kept = rendered_videos(out, plans) if resuming else set()
    if kept:
        log.info("continuing the unfinished set in %s: %d of its %d videos are rendered", out, len(kept), len(plans))
    _render_all([plan for plan in plans if plan.video not in kept], out, cfg.workers)
    faults = {plan.video: plan.fault for plan in plans if plan.fault}
    manifest = {**header, "records": counts, "faults": faults}
    manifest_path(out).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    partial_manifest_path(out).unlink()
    return SynthResult(out, len(plans), counts)


def read_faults(out: str | Path) -> dict[str, str]:
    """The faulty videos of a generated set (path relative to `out` -> fault kind), from its manifest."""
    return dict(json.loads(manifest_path(out).read_text()).get("faults", {}))


def is_generated(out: str | Path) -> bool:
    """True when a finished synthetic set is in `out` (the manifest is written last)."""
    out = Path(out)
    return manifest_path(out).is_file() and all((out / "annotations" / f"{s}.jsonl").is_file() for s in SPLITS)


def generation_lock(out: Path) -> AbstractContextManager[None]:
    """Hold an inter-process lock on `out` while generating into it (not beside another run
    generating into the same folder)."""
    return folder_lock(out, "generating")


# What a generated set consists of in its folder (`clear_set` removes these and nothing else).
SET_FOLDERS = ("videos", "annotations")


def holds_a_set(out: str | Path) -> bool:
    """True when `out` holds a synthetic set, finished or not: a manifest, or any file under
    videos/ or annotations/."""
    out = Path(out)
    return manifest_path(out).is_file() or partial_manifest_path(out).is_file() or any(
        (out / name).is_dir() and any((out / name).iterdir()) for name in SET_FOLDERS
    )


def manifest_differences(out: str | Path, cfg: SynthConfig) -> tuple[int | None, dict[str, tuple[Any, Any]]]:
    """How the finished set in `out` differs from what `cfg` would generate: the generator layout
    it was made with when older than this one (else None), and (there, asked) per parameter that
    differs. The number of workers is not a difference (it changes no byte); a key the manifest
    lacks (added since the set was made) counts as its default."""
    manifest = json.loads(manifest_path(out).read_text())
    layout = int(manifest.get("layout", 1))
    return (layout if layout != LAYOUT_VERSION else None), _config_differences(manifest.get("config", {}), cfg)


def set_differences(out: str | Path, cfg: SynthConfig) -> list[str]:
    """manifest_differences as one phrase each (empty: the same set)."""
    layout, differ = manifest_differences(out, cfg)
    found = [f"made by an older generator (layout {layout}, now {LAYOUT_VERSION})"] if layout is not None else []
    return found + [f"{k}: {there} there, {asked} asked" for k, (there, asked) in differ.items()]


def absent_videos(out: str | Path, cfg: SynthConfig) -> list[str]:
    """The videos of the set `cfg` makes that are not in `out` (a planted 'missing' fault aside):
    a check of each file's existence, cheap enough for every start, so that a set one of whose
    videos was deleted is not taken for complete."""
    out = Path(out)
    planted = {video for video, kind in read_faults(out).items() if kind == "missing"}
    wanted = (video_file(split, i) for split, count in split_sizes(cfg.videos).items() for i in range(count))
    return [video for video in wanted if video not in planted and not (out / video).is_file()]


def restore_videos(out: str | Path, cfg: SynthConfig) -> list[str]:
    """Render again the videos missing from the finished set in `out`, made from `cfg` (the same
    plans give the same files); returns them (empty: none was missing)."""
    missing = set(absent_videos(out, cfg))
    if missing:
        (Path(out) / "videos").mkdir(parents=True, exist_ok=True)  # the whole folder may have gone
        _render_all([plan for plan in iter_plans(cfg) if plan.video in missing], Path(out), cfg.workers)
    return sorted(missing)


def listed(videos: Sequence[str], most: int = 3) -> str:
    """'a, b, c and 4 more': the first `most` of a list, for one-line messages."""
    shown = ", ".join(videos[:most])
    return shown + (f" and {len(videos) - most} more" if len(videos) > most else "")


def clear_set(out: str | Path) -> None:
    """Remove the set in `out`: its videos/ and annotations/ folders and its manifest, nothing else."""
    import shutil

    out = Path(out)
    manifest_path(out).unlink(missing_ok=True)  # first: a half-removed set is never taken for finished
    partial_manifest_path(out).unlink(missing_ok=True)
    for name in SET_FOLDERS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def ensure_generated(out: str | Path, params: dict[str, Any] | None = None) -> SynthResult | None:
    """Generate the set into `out` unless it is already there ("generate when absent").

    A set that is there but was generated with other parameters (the number of workers aside)
    is an error, not silently reused; videos missing from a set that is there are rendered again.
    """
    try:
        cfg = SynthConfig(**dict(params or {}))
    except TypeError as err:  # an unknown key
        raise ValueError(f"data.generate: {err} (keys: {', '.join(SynthConfig.__dataclass_fields__)})") from None
    except ValueError as err:  # a value of the wrong kind or range
        raise ValueError(f"data.generate: {err}") from None
    if not is_generated(out):
        with generation_lock(Path(out)):
            if not is_generated(out):  # another process may have finished it while we waited
                return generate(out, cfg)
    layout, differ = manifest_differences(out, cfg)
    if layout is not None:
        raise ValueError(
            f"the synthetic set in {out} was made by an older generator (layout {layout}, now {LAYOUT_VERSION}: "
            "events of different kinds are now placed independently); delete it to generate it again"
        )
    if differ:
        details = ", ".join(f"{k}: {there} there, {asked} asked" for k, (there, asked) in differ.items())
        matching = " ".join(f"data.generate.{k}={there}" for k, (there, _) in differ.items())
        raise ValueError(
            f"the synthetic set in {out} was generated with other parameters ({details}); "
            f"to train on it as it is, add data.generate=null (or {matching}); else delete it, or set "
            "data.root to another folder"
        )
    if absent_videos(out, cfg):
        with generation_lock(Path(out)):
            restored = restore_videos(out, cfg)  # none when another process restored them while we waited
        if restored:
            log.warning("the synthetic set in %s lacked %d of its videos (%s); rendered them again", out,
                        len(restored), listed(restored))
    return None


def iter_plans(cfg: SynthConfig) -> Iterable[VideoPlan]:
    """Every video's plan, split by split (for tests and tools that check the rendered files)."""
    for split, count in split_sizes(cfg.videos).items():
        yield from plan_split(cfg, split, count)


def tone_band(event: SynthEvent) -> tuple[float, float]:
    """The frequency band (Hz) a tone's energy lies in (pitch +- the glide)."""
    assert event.pitch is not None
    base = PITCHES[event.pitch]
    factor = 2.0 ** (GLIDE_OCTAVES / 2)
    return base / factor / 1.05, base * factor * 1.05

