"""Decoding: the real reference clips, Whisper's log-mel, audio segments, frame sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from damo_lit.data.decode import (
    LOG_FLOOR,
    DecodeError,
    DecodeParams,
    audio_segments,
    decode_video,
    header_video_duration,
    load_audio,
    normalise_log_mel,
    probe_duration,
    sample_indices,
    whisper_log_mel,
)

PARAMS = DecodeParams(num_frames=8, frame_size=(48, 32), num_audio_segments=4, audio_segment_frames=60)


def test_stereo_44k_clip_comes_out_16k_mono(shared_data):
    path = shared_data / "videos" / "dog_barking.mp4"
    wave = load_audio(path)
    assert wave is not None and wave.ndim == 1 and wave.dtype == np.float32
    assert len(wave) / 16000 == pytest.approx(7.2, abs=0.05)  # 7.2 s at 16 kHz
    assert np.abs(wave).max() > 0.05  # the dog barks
    decoded = decode_video(path, PARAMS)
    assert decoded.has_audio and decoded.audio_mask.all()
    assert decoded.frames.shape == (8, 3, 48, 32) and decoded.frames.dtype == np.uint8
    assert decoded.audio_mel.shape == (4, 80, 60) and decoded.audio_mel.dtype == np.float32
    assert decoded.duration == pytest.approx(7.08, abs=0.05)
    assert probe_duration(path) == pytest.approx(decoded.duration, abs=1e-3)  # the video's, not the 7.2 s audio's
    # times are the frames' real presentation times (24 fps), increasing, inside the video
    assert np.all(np.diff(decoded.frame_times) > 0) and decoded.frame_times[-1] < decoded.duration
    np.testing.assert_allclose(decoded.frame_times * 24, np.round(decoded.frame_times * 24), atol=1e-3)
    np.testing.assert_allclose(decoded.audio_times, (np.arange(4) + 0.5) * decoded.duration / 4, rtol=1e-6)


def test_clip_without_audio_loads_with_audio_marked_absent(shared_data):
    path = shared_data / "videos" / "silence_girl.mp4"
    assert load_audio(path) is None
    decoded = decode_video(path, PARAMS)
    assert not decoded.has_audio and not decoded.audio_mask.any()
    assert decoded.frames.shape == (8, 3, 48, 32) and decoded.frames.mean() > 10  # real pictures
    assert decoded.duration == pytest.approx(11.7, abs=0.1)
    silence = normalise_log_mel(np.array(LOG_FLOOR), LOG_FLOOR)
    np.testing.assert_array_equal(decoded.audio_mel, np.full((4, 80, 60), silence, dtype=np.float32))
    assert probe_duration(path) == pytest.approx(11.7, abs=0.1)


def test_log_mel_matches_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 30) / 16000
    wave = (0.05 * rng.standard_normal(len(t)) + 0.5 * np.sin(2 * np.pi * 440 * t) * (t < 4)).astype(np.float32)
    reference = WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np")
    ours = whisper_log_mel(wave)
    assert ours.shape == reference.input_features[0].shape == (80, 3000)
    np.testing.assert_allclose(ours, reference.input_features[0], atol=1e-4)


def test_segments_are_centred_and_padded_with_silence():
    rate = 16000
    params = DecodeParams(num_frames=4, frame_size=8, num_audio_segments=5, audio_segment_frames=40)
    t = np.arange(int(rate * 2.0)) / rate
    wave = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)  # a 2 s tone in a 10 s video
    mel, centres, mask = audio_segments(wave, 10.0, params)
    np.testing.assert_allclose(centres, [1, 3, 5, 7, 9])
    assert mask.tolist() == [True, False, False, False, False]
    full = whisper_log_mel(wave)
    np.testing.assert_allclose(mel[0], full[:, 80:120], atol=1e-6)  # frames 80-119 around 1.0 s
    silence = normalise_log_mel(np.array(LOG_FLOOR), float(full.max() * 4 - 4))
    assert np.allclose(mel[2:], silence) and mel[2:].max() < mel[0].max()


@pytest.mark.parametrize("width", [16, 48, 50])
def test_any_frame_size_decodes(shared_data, width):
    """decord's scaler fails for some widths (16, 48, ...): those are resized after decoding."""
    params = DecodeParams(num_frames=3, frame_size=(20, width), num_audio_segments=1, audio_segment_frames=4)
    decoded = decode_video(shared_data / "videos" / "silence_girl.mp4", params)
    assert decoded.frames.shape == (3, 3, 20, width) and decoded.frames.mean() > 10


def test_sample_indices_uniform_and_short_videos_padded():
    np.testing.assert_array_equal(sample_indices(100, 4), [12, 37, 62, 87])
    np.testing.assert_array_equal(sample_indices(3, 8), [0, 1, 2])


@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt", "truncated", "folder"])
def test_bad_files_raise_decode_error_naming_them(tmp_path, shared_data, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "corrupt":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    elif kind == "truncated":
        path.write_bytes((shared_data / "videos" / "dog_barking.mp4").read_bytes()[:30000])
    with pytest.raises(DecodeError) as info:
        decode_video(path, PARAMS)
    assert str(path) in str(info.value)
    expected = {"missing": "not found", "empty": "0 bytes", "corrupt": "cannot read", "truncated": "cannot read",
                "folder": "is a folder, not a video file"}
    assert expected[kind] in info.value.reason


def _cut(source: Path, target: Path, share: float) -> Path:
    """A copy of `source` with only its first `share` of bytes, as an interrupted download leaves it."""
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * share)])
    return target


@pytest.mark.parametrize(("share", "frames_end"), [(0.3, "2.7"), (0.9, "6.6")])
def test_truncated_clip_raises_naming_the_shortfall(tmp_path, shared_data, share, frames_end):
    """decord decodes a cut MP4's remaining frames without a word; the header still says 7.1 s."""
    path = _cut(shared_data / "videos" / "dog_barking.mp4", tmp_path / "cut.mp4", share)
    with pytest.raises(DecodeError) as info:
        decode_video(path, PARAMS)
    assert info.value.path == str(path)
    assert info.value.reason == f"truncated: header says 7.1 s, frames end at {frames_end} s"


@pytest.mark.parametrize("name", ["dog_barking.mp4", "silence_girl.mp4"])
def test_whole_reference_clips_match_their_header(shared_data, name):
    path = shared_data / "videos" / name
    assert header_video_duration(path) == pytest.approx(decode_video(path, PARAMS).duration, abs=1e-3)


def test_synthetic_videos_are_not_flagged_truncated(synth_dir):
    videos = sorted((synth_dir / "videos").glob("*.mp4"))
    decoded = [decode_video(path, PARAMS) for path in videos]
    assert len(decoded) == 20 and {d.has_audio for d in decoded} == {True, False}  # both kinds checked


@pytest.mark.parametrize("audio_seconds", [None, 1.0, 6.0])
def test_audio_shorter_longer_or_absent_is_not_truncation(tmp_path, audio_seconds):
    """The container's duration spans its longest stream: only the video stream's own counts."""
    from damo_lit.data.synthetic import write_mp4

    fps, rate = 8, 16000
    frames = np.full((24, 32, 32, 3), 128, dtype=np.uint8)  # 3 s of video
    audio = None
    if audio_seconds is not None:
        audio = (0.1 * np.ones((1, int(audio_seconds * rate)), dtype=np.float32), rate)
    path = tmp_path / "clip.mp4"
    write_mp4(path, frames, fps, audio)
    decoded = decode_video(path, PARAMS)
    assert decoded.duration == pytest.approx(3.0) and decoded.has_audio == (audio is not None)
