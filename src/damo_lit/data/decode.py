"""Decoding a video file into the arrays of the batch contract (numpy only, no torch).

Frames: decord samples `num_frames` frames uniformly (the centre of each of N equal slices of
the frame list), resized to `frame_size` (a stretch, no crop), with their real presentation
times from `get_frame_timestamp`. A video with fewer frames than N gives all its frames and
padding marked False in `frame_mask`.

Audio: PyAV decodes the first audio stream (a file without one is a real case: the audio is
marked absent, not an error), placed on the stream's own clock, mixed to mono and resampled
with librosa to 16 kHz. Features are Whisper's: 80-bin log-mel of a 400-point STFT with hop
160 (100 frames a second), log10, clamped to (max - 8), then (x + 4) / 4. The track is cut
into M segments whose centres are spaced uniformly over the video; each segment is a window of
`audio_segment_frames` mel frames centred on its time, padded with the log-mel of silence
where it runs past the track (as Whisper pads its 30 s input with zeros).

Truncation: decord indexes a cut file up to the cut and decodes what is there without a word,
so the frames' real extent is checked against the video stream's duration in the header (see
`check_not_truncated`); a file that falls short is a DecodeError like any other bad file.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

WHISPER_RATE = 16000
N_FFT = 400
HOP = 160
LOG_FLOOR = -10.0  # log10 of the 1e-10 clamp: the log-mel of digital silence before normalising
# A video whose frames end short of its header's duration by more than the larger of these is
# truncated. Healthy encodes (the shared clips, synthetic videos, B-frames, audio shorter or
# longer than the video, MPEG-TS, AVI) end exactly at it; cutting dog_barking.mp4 (7.08 s) to 90%
# of its bytes ends the frames 0.50 s (7%) early, to 98% 0.04 s (not flagged: under a frame lost).
# Two frame intervals absorb a last frame's duration rounding in very short videos.
TRUNCATION_SHARE = 0.05
TRUNCATION_FRAMES = 2


# Imported once by the fork server, so that each worker it forks starts warm instead of importing
# it all again (librosa alone takes 2 s, Lightning 5 s).
WORKER_PRELOAD = ["numpy", "av", "decord", "librosa.core.audio", "librosa.filters", "damo_lit.data.dataset"]
# Packages whose modules, when the parent has imported them, the fork server imports too. A
# spawned or forkserver child re-runs the parent's main module (Python 3.11 does not preload it
# in the fork server), and a console script's main imports the whole CLI; with these already
# imported that re-run is instant. The server only imports, it never runs torch, so forking
# workers from it is safe (unlike forking a parent that has run torch, which deadlocks).
PRELOAD_PACKAGES = ("torch", "lightning", "transformers", "hydra", "omegaconf", "damo_lit")


def worker_context() -> multiprocessing.context.BaseContext:
    """The 'forkserver' context for worker processes (never fork after torch), kept warm.

    The preload applies when the fork server starts (the first call that starts a worker);
    later workers fork from the same server.
    """
    loaded = [
        name
        for name in list(sys.modules)
        if name.split(".")[0] in PRELOAD_PACKAGES
        and (name.startswith("damo_lit") or name.count(".") == 0 or name.startswith("lightning.pytorch"))
    ]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(sorted(set(WORKER_PRELOAD + loaded)))
    return context


class DecodeError(RuntimeError):
    """A file that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class DecodeParams:
    """What a decoded sample depends on (besides the file); part of the decoded-cache key."""

    num_frames: int = 32
    frame_size: int | tuple[int, int] = 64  # H = W, or (H, W)
    num_audio_segments: int = 32
    audio_segment_frames: int = 50  # mel frames per segment (100 a second)
    sample_rate: int = WHISPER_RATE
    n_mels: int = 80

    def __post_init__(self) -> None:
        size = self.frame_size if isinstance(self.frame_size, (tuple, list)) else (self.frame_size, self.frame_size)
        if len(size) != 2 or min(int(s) for s in size) < 1:
            raise ValueError(f"frame_size must be a positive int or [H, W], got {self.frame_size!r}")
        object.__setattr__(self, "frame_size", (int(size[0]), int(size[1])))
        for name in ("num_frames", "num_audio_segments", "audio_segment_frames", "sample_rate", "n_mels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @property
    def height(self) -> int:
        return self.frame_size[0]  # type: ignore[index]

    @property
    def width(self) -> int:
        return self.frame_size[1]  # type: ignore[index]

    def fingerprint(self) -> str:
        """A short stable hash of the parameters (and the feature recipe's and the checks' versions:
        a new check must not be bypassed by decodes cached before it)."""
        text = json.dumps({**asdict(self), "recipe": "whisper-logmel-v1", "checks": "truncation-v1"}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class DecodedVideo:
    """One video's arrays, shaped as one row of the batch contract."""

    frames: np.ndarray  # uint8 (N, 3, H, W)
    frame_times: np.ndarray  # float32 (N,)
    frame_mask: np.ndarray  # bool (N,)
    audio_mel: np.ndarray  # float32 (M, n_mels, T)
    audio_times: np.ndarray  # float32 (M,)
    audio_mask: np.ndarray  # bool (M,)
    has_audio: bool
    duration: float  # seconds, from the video stream

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numeric arrays (np.savez-able, loadable without pickle)."""
        out = {k: v for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        out["has_audio"] = np.array(self.has_audio)
        out["duration"] = np.array(self.duration, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Any) -> "DecodedVideo":
        return cls(
            frames=arrays["frames"],
            frame_times=arrays["frame_times"],
            frame_mask=arrays["frame_mask"],
            audio_mel=arrays["audio_mel"],
            audio_times=arrays["audio_times"],
            audio_mask=arrays["audio_mask"],
            has_audio=bool(arrays["has_audio"]),
            duration=float(arrays["duration"]),
        )


def check_file(path: str | Path) -> Path:
    """Raise DecodeError for a missing or empty file (decord's own errors on them are cryptic)."""
    path = Path(path)
    if path.is_dir():
        raise DecodeError(path, "is a folder, not a video file")
    if not path.is_file():
        raise DecodeError(path, "file not found")
    if path.stat().st_size == 0:
        raise DecodeError(path, "file is empty (0 bytes)")
    return path


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """Uniform sampling: the centre frame of each of `num_frames` equal slices."""
    if num_available >= num_frames:
        return ((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)
    return np.arange(num_available, dtype=np.int64)


def _read_frames(path: Path, num_frames: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray, float]:
    """decord: (frames (n, h, w, 3) uint8, timestamps (n, 2), duration); width/height -1 = native."""
    from decord import VideoReader, cpu

    reader = VideoReader(str(path), ctx=cpu(0), width=width, height=height, num_threads=1)
    available = len(reader)
    if available == 0:
        raise DecodeError(path, "the video stream has no frames")
    indices = list(sample_indices(available, num_frames))
    batch = reader.get_batch(indices).asnumpy()
    stamps = reader.get_frame_timestamp(indices)
    duration = float(reader.get_frame_timestamp([available - 1])[0, 1])
    return batch, stamps, duration


@dataclass(frozen=True)
class Header:
    """What a file's header says of its length, in seconds (None where it says nothing)."""

    container: float | None  # spans the longest stream
    video: float | None  # the first video stream's own
    streams: int


def read_header(path: str | Path) -> Header | None:
    """The header's durations (no decoding), or None when PyAV cannot open the file."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0] if container.streams.video else None
            video = float(stream.duration * stream.time_base) if stream and stream.duration and stream.time_base else None
            whole = float(container.duration) / 1_000_000 if container.duration else None
            return Header(whole, video, len(container.streams))
    except av.error.FFmpegError:
        return None


def header_video_duration(path: str | Path) -> float | None:
    """The video stream's duration as the header states it, in seconds; None when it does not.

    Only the video stream's own duration counts: a container's duration spans its longest
    stream, and audio may outlast the video. A container that keeps no per-stream duration
    (Matroska, WebM) is trusted only when the video is its sole stream.
    """
    header = read_header(path)
    if header is None:
        return None
    if header.video is not None:
        return header.video
    return header.container if header.streams == 1 else None


def check_not_truncated(path: Path, frames_end: float, frame_interval: float) -> None:
    """Raise DecodeError when the frames end short of the header's duration (a cut file).

    decord indexes a truncated MP4 only up to the cut and decodes those frames silently, so
    its frame list is compared with what the header (written before the cut) promised.
    """
    header = header_video_duration(path)
    if header is None:
        return
    tolerance = max(TRUNCATION_SHARE * header, TRUNCATION_FRAMES * frame_interval)
    if header - frames_end > tolerance:
        raise DecodeError(path, f"truncated: header says {header:.1f} s, frames end at {frames_end:.1f} s")


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


def decode_frames(path: str | Path, params: DecodeParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(frames uint8 (N,3,H,W), times float32 (N,), mask bool (N,), video duration in seconds).

    DecodeError for a file decord cannot read and for one whose frames end short of its header.
    """
    from decord import DECORDError

    path = check_file(path)
    try:
        try:
            batch, stamps, duration = _read_frames(path, params.num_frames, params.width, params.height)
        except (DECORDError, RuntimeError):
            # decord's own scaler fails for some widths (8, 12, 16, 24, 48, 72, ...): decode at the
            # native size and resize here; a file that still fails is unreadable
            batch, stamps, duration = _read_frames(path, params.num_frames, -1, -1)
            batch = _resize(batch, params.height, params.width)
    except (DECORDError, RuntimeError) as err:  # decord raises both, for unreadable and truncated files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DecodeError(path, f"decord cannot read the video ({first[:200]})") from None
    check_not_truncated(path, duration, float(np.median(stamps[:, 1] - stamps[:, 0])))
    n = params.num_frames
    frames = np.zeros((n, 3, params.height, params.width), dtype=np.uint8)
    times = np.zeros(n, dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    got = len(batch)
    frames[:got] = batch.transpose(0, 3, 1, 2)
    times[:got] = stamps[:, 0]
    times[got:] = stamps[-1, 0] if got else 0.0
    mask[:got] = True
    return frames, times, mask, duration


def load_audio(path: str | Path, sample_rate: int = WHISPER_RATE) -> np.ndarray | None:
    """Mono float32 waveform at `sample_rate`, time-aligned to 0 s; None when there is no audio stream."""
    import av
    import librosa

    path = check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp")  # planar float, same rate and layout
            chunks: list[np.ndarray] = []
            start_time: float | None = None
            rate = stream.rate
            for frame in container.decode(stream):
                if start_time is None and frame.pts is not None and frame.time_base is not None:
                    start_time = float(frame.pts * frame.time_base)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
                    rate = out.sample_rate
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
    except av.error.FFmpegError as err:
        raise DecodeError(path, f"PyAV cannot decode the audio ({err})") from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    wave = np.concatenate(chunks).astype(np.float32)
    offset = int(round((start_time or 0.0) * rate))
    if offset > 0:
        wave = np.concatenate([np.zeros(offset, dtype=np.float32), wave])
    elif offset < 0:
        wave = wave[-offset:]
    if rate != sample_rate:
        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)


_MEL_FILTERS: dict[tuple[int, int, int], np.ndarray] = {}


def mel_filters(sample_rate: int, n_fft: int = N_FFT, n_mels: int = 80) -> np.ndarray:
    """Slaney-style mel filter bank (as Whisper's), cached per (rate, n_fft, n_mels)."""
    import librosa

    key = (sample_rate, n_fft, n_mels)
    if key not in _MEL_FILTERS:
        _MEL_FILTERS[key] = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels).astype(np.float32)
    return _MEL_FILTERS[key]


def log_mel_raw(wave: np.ndarray, sample_rate: int = WHISPER_RATE, n_mels: int = 80) -> np.ndarray:
    """log10 mel power (n_mels, frames), before Whisper's clamp-and-scale; frame k is at k * 10 ms."""
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) == 0:
        return np.zeros((n_mels, 0), dtype=np.float32)
    pad = N_FFT // 2
    mode = "reflect" if len(wave) > pad else "constant"
    padded = np.pad(wave, pad, mode=mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic Hann, as torch.hann_window
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    power = power[:-1]  # Whisper drops the last STFT frame
    mel = mel_filters(sample_rate, N_FFT, n_mels) @ power.T.astype(np.float32)
    return np.log10(np.maximum(mel, 1e-10)).astype(np.float32)


def normalise_log_mel(raw: np.ndarray, peak: float) -> np.ndarray:
    """Whisper's scaling: clamp to (peak - 8), then (x + 4) / 4."""
    return ((np.maximum(raw, peak - 8.0) + 4.0) / 4.0).astype(np.float32)


def whisper_log_mel(wave: np.ndarray, sample_rate: int = WHISPER_RATE, n_mels: int = 80) -> np.ndarray:
    """Whisper-style normalised log-mel (n_mels, frames) of a 16 kHz mono waveform."""
    raw = log_mel_raw(wave, sample_rate, n_mels)
    peak = float(raw.max()) if raw.size else LOG_FLOOR
    return normalise_log_mel(raw, peak)


def segment_centres(duration: float, num_segments: int) -> np.ndarray:
    """Centre times of `num_segments` equal slices of [0, duration]."""
    return ((np.arange(num_segments) + 0.5) * duration / num_segments).astype(np.float32)


def audio_segments(
    wave: np.ndarray | None, duration: float, params: DecodeParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mel (M, n_mels, T), centre times (M,), mask (M,)): windows of T mel frames around each centre.

    Windows beyond the track hold the log-mel of silence; a segment is masked False when its
    centre lies outside the track (all False without audio).
    """
    m, t = params.num_audio_segments, params.audio_segment_frames
    centres = segment_centres(duration, m)
    frames_per_second = params.sample_rate / HOP
    if wave is None or len(wave) == 0:
        silence = normalise_log_mel(np.array(LOG_FLOOR), LOG_FLOOR)
        return np.full((m, params.n_mels, t), silence, dtype=np.float32), centres, np.zeros(m, dtype=bool)
    raw = log_mel_raw(wave, params.sample_rate, params.n_mels)
    peak = float(raw.max())
    padded = np.full((params.n_mels, raw.shape[1] + 2 * t), LOG_FLOOR, dtype=np.float32)
    padded[:, t : t + raw.shape[1]] = raw
    mel = np.empty((m, params.n_mels, t), dtype=np.float32)
    for i, centre in enumerate(centres):
        first = int(round(float(centre) * frames_per_second)) - t // 2
        lo = int(np.clip(first + t, 0, padded.shape[1] - t))
        mel[i] = padded[:, lo : lo + t]
    track_seconds = len(wave) / params.sample_rate
    return normalise_log_mel(mel, peak), centres, centres < track_seconds


def decode_video(path: str | Path, params: DecodeParams) -> DecodedVideo:
    """Decode one file; DecodeError names it when its video cannot be read.

    Audio that exists but cannot be decoded is a warning and counts as absent audio: the
    frames are still good.
    """
    frames, times, mask, duration = decode_frames(path, params)
    try:
        wave = load_audio(path, params.sample_rate)
    except DecodeError as err:
        warnings.warn(f"{err}; using the video without audio", RuntimeWarning, stacklevel=2)
        wave = None
    mel, centres, audio_mask = audio_segments(wave, duration, params)
    return DecodedVideo(
        frames=frames,
        frame_times=times,
        frame_mask=mask,
        audio_mel=mel,
        audio_times=centres,
        audio_mask=audio_mask,
        has_audio=wave is not None and len(wave) > 0,
        duration=duration,
    )


def probe_duration(path: str | Path) -> float | None:
    """The video's duration in seconds from its header (no decoding): the video stream's own, as
    decoding sees it (header_video_duration); the container's only where the header keeps no
    per-stream duration. None when it cannot be read."""
    try:
        header = read_header(check_file(path))
    except DecodeError:
        return None
    if header is None:
        return None
    return header.video or header.container
