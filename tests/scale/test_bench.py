"""Smoke tests of the throughput study (experiments/throughput/run.py) at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "throughput" / "run.py"


def _bench(out: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(SCRIPT), "quick=true", f"out={out}", *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "damo-lit throughput" in done.stdout, "the table is printed"
    return json.loads((out / "throughput.json").read_text())


def test_bench_decoding_and_fusion_figures(tmp_path: Path) -> None:
    result = _bench(tmp_path, "sections=[sparse,fuse]")
    assert result["sparse_vs_full"] > 0
    for clip in result["sparse_vs_full_clips"]:
        assert clip["same_frames_mean_abs_diff"] < 2.0, "decord and PyAV decode the same frames"
    assert set(result["llm_tokens"]) == {"8", "16"} and len(set(result["llm_tokens"].values())) == 1
    assert result["fuse_time_16_over_8"] > 0 and result["plain_attention_time_16_over_8"] > 0
    assert result["stream_tokens"]["16"] > result["stream_tokens"]["8"], "plain attention sees every stream token"
    assert "cache_speedup" not in result and "loader_samples_per_s" not in result


def test_bench_cache_on_sized_and_demo_clips(tmp_path: Path) -> None:
    """cache_speedup is measured on clips of cache_clip_size px (quick: 96), the demo's 64 px beside it."""
    result = _bench(tmp_path, "sections=[cache]")
    steps = result["step_s"]
    assert result["cache_speedup"] == pytest.approx(steps["decode_96px"] / steps["feature_cache_96px"])
    assert result["cache_speedup_demo_clips"] == pytest.approx(steps["decode"] / steps["feature_cache"])
    assert result["feature_cache_build_sized"]["videos"] == result["feature_cache_build"]["videos"] == 10
    assert (tmp_path / "synth_96px_12fps" / "videos").is_dir() and (tmp_path / "synth" / "videos").is_dir()


def test_bench_tower_chunks_bound_the_towers_memory(tmp_path: Path) -> None:
    """model.vision.chunk_size: the frozen tower's forward adds far less memory in chunks of 8 frames
    than over 64 at once (each measured in a fresh process)."""
    result = _bench(tmp_path, "sections=[tower_chunks]")
    added = result["tower_forward_added_mib"]
    assert set(added) == {"all_at_once", "chunks_of_8"}
    assert added["all_at_once"] > 1.5 * added["chunks_of_8"] > 0, added
    assert result["tower_chunk_memory_ratio"] == pytest.approx(added["all_at_once"] / added["chunks_of_8"])
    assert "over 64 frames" in result["tower_chunks_setup"]


def test_bench_lm_head_at_labelled_positions_adds_less_memory(tmp_path: Path) -> None:
    """The LM head only where the next token is labelled: a loss + backward adds far less memory
    than transformers' own loss over every position (each measured in a fresh process)."""
    result = _bench(tmp_path, "sections=[lm_head]")
    added = result["lm_loss_added_mib"]
    assert set(added) == {"every_position", "labelled_positions"}
    assert added["every_position"] > 1.5 * added["labelled_positions"] > 0, added
    assert result["lm_head_memory_ratio"] == pytest.approx(added["every_position"] / added["labelled_positions"])
    assert result["lm_loss_s"]["labelled_positions"] > 0
    assert "vocabulary 16000" in result["lm_head_setup"] and "8 labelled tokens" in result["lm_head_setup"]


def test_bench_unknown_key_is_an_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), f"out={tmp_path}", "bogus=1"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "unknown key(s) ['bogus']" in done.stderr


def test_bench_takes_one_section_by_name_and_names_a_bad_thread_count() -> None:
    """sections=fuse was taken letter by letter ("unknown section(s) ['e', 'f', 's', 'u']"), and
    threads=abc stopped the run with a bare ValueError."""
    from experiments.throughput.run import settings

    assert list(settings(["sections=fuse"]).sections) == ["fuse"]
    assert list(settings(["sections=[fuse,lm_head]", "threads=null"]).sections) == ["fuse", "lm_head"]
    assert settings(["threads=2"]).threads == 2 and settings(["threads=null"]).threads is None
    for word in ("threads=abc", "threads=0", "threads=1.5"):
        with pytest.raises(SystemExit, match=rf"bench: {word}: expected a whole number of at least 1, or null"):
            settings([word])


def test_bench_cache_over_real_clips(tmp_path: Path, shared_data: Path) -> None:
    """Each record gets its own link to a real clip, so that every sample is really decoded."""
    result = _bench(tmp_path, "sections=[cache_real]", f"real_videos={shared_data / 'videos'}")
    assert result["cache_speedup_real_clips"] > 0
    assert set(result["step_s_real_clips"]) == {"decode", "feature_cache"}
    assert result["feature_cache_build_real_clips"]["videos"] == 4, "2 clips x real_records=2 (quick), one link each"
    links = sorted(p.name for p in (tmp_path / "real" / "videos").iterdir())
    assert links == ["dog_barking_000.mp4", "dog_barking_001.mp4", "silence_girl_000.mp4", "silence_girl_001.mp4"]
    assert "854x480" in result["cache_real_setup"] and "no audio" in result["cache_real_setup"]


def test_bench_real_clips_skipped_without_videos(tmp_path: Path) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    result = _bench(tmp_path / "out", "sections=[cache_real]", f"real_videos={empty}")
    assert result["cache_real_skipped"] == f"no .mp4 files in real_videos={empty}"
    assert "cache_speedup_real_clips" not in result


@pytest.mark.slow
def test_bench_every_section(tmp_path: Path) -> None:
    result = _bench(tmp_path)
    assert result["loader_samples_per_s"]["0"] > 0 and result["raw_decode_videos_per_s"] > 0
    assert result["cache_speedup"] > 0 and result["cache_speedup_demo_clips"] > 0
    assert set(result["step_s"]) == {"decode_96px", "feature_cache_96px", "decode", "decoded_npz_cache",
                                     "feature_cache", "decode_frozen_lm", "feature_cache_frozen_lm"}
    assert result["feature_cache_build"]["videos"] == result["feature_cache_build_sized"]["videos"] == 10
    assert "clips of 96x96 px at 12 fps" in result["cache_setup"]
    assert set(result["section_seconds"]) == {"sparse", "loader", "cache", "cache_real", "fuse", "tower_chunks",
                                              "lm_head"}


FSDP_SCRIPT = SCRIPT.parent / "fsdp_paper.py"


@pytest.mark.parametrize("script, words", [
    (SCRIPT, ["sections=", "quick=true", "clip_size=128", "real_videos=", "throughput.json", "lm_head",
              "lm_head_memory_ratio"]),
    (FSDP_SCRIPT, ["batch_sizes=[1,8,32,64,128]", "resume=false", "build_on=cuda", "fsdp_paper.json",
                   "fsdp_resume.json", "check=true"]),
])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_throughput_runners_print_help_without_a_gpu(tmp_path: Path, script: Path, words: list[str], flag: str) -> None:
    """experiments/README.md: every runner takes --help (keys, defaults, what it writes), on any machine."""
    import os

    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(script), flag, f"out={out}"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "unknown key" not in done.stderr and "needs a CUDA GPU" not in done.stderr
    for word in words:
        assert word in done.stdout, word
    assert not out.exists(), "--help measures and writes nothing"


def test_fsdp_paper_unknown_key_is_an_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(FSDP_SCRIPT), f"out={tmp_path / 'out'}", "batch_size=8"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "unknown key(s) ['batch_size']" in done.stderr and "batch_sizes" in done.stderr
    assert not (tmp_path / "out").exists()


def test_fsdp_paper_leaves_the_launchers_hydra_words_alone() -> None:
    """Lightning's launcher starts the other ranks with the script's words plus hydra.run.dir=...:
    not unknown keys (the two-process resume check, make test-slow, stopped on them)."""
    from experiments.throughput.fsdp_paper import settings

    cfg = settings(["steps=3", "hydra.run.dir=/tmp/x", "hydra.job.name=train_ddp_process_1"])
    assert cfg.steps == 3 and "hydra" not in cfg
