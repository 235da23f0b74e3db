"""make bench: the throughput study. Every figure is measured side by side in one run, on this
machine, and written to OUT/throughput.json with a printed table (docs/scale.md).

    python experiments/throughput/run.py [--help] [out=outputs/bench] [quick=true]
                                      [sections=[sparse,loader,cache,cache_real,fuse,tower_chunks,lm_head]]
                                      [real_videos=DIR]
    make bench [quick=true]

- sparse_vs_full: decoding N frames of 30-60 s clips (written by the synthetic generator's
  writer) with decord's sparse access (the data layer's decode_frames) vs decoding every
  frame with PyAV and keeping the same N (target >= 3);
- loader_samples_per_s with 0, 1 and 2 DataLoader workers (no decoded cache: every sample is
  decoded), beside the raw decode rate of one process;
- cache_speedup: stage-3 training step time on damo_tiny with frozen towers, decoding every
  batch vs reading the frozen-encoder feature cache (target >= 5), over synthetic clips at a
  Charades video's pixels and rate (320x320 px, 24 fps: cache_clip_size, cache_clip_fps);
  cache_speedup_demo_clips the same over the demo's 64x64 8 fps clips, which cost little to
  decode; the decoded .npz cache too;
- cache_speedup_real_clips: the same two steps over real encodes (real_videos=DIR, by default
  the two clips of ../shared/data/videos): the synthetic 64x64 clips cost far less to decode
  than any real video, so they understate what the cache saves;
- fuse_time_192_over_24: residual + T-Fuseformer + projector forward time at 192 vs 24 frames
  (target <= 10), beside one plain self-attention layer over every stream token at the same frame
  counts (plain_attention_time_192_over_24), and llm_tokens at 24, 48, 96, 192 frames (constant);
- tower_chunk_memory_ratio: the peak memory a frozen CLIP-style tower's forward adds over
  `chunk_frames` frames at once vs `model.vision.chunk_size` frames at a time (each in a fresh
  process: the RSS high-water mark, reset right before the forward, on the CPU; max_memory_allocated
  on a GPU), beside the time of each;
- lm_head_memory_ratio: the peak memory a teacher-forced loss + backward adds with the LM head
  over every position (transformers' own loss) vs only where the next token is labelled (the
  stages' loss), on a Mistral-vocabulary one-layer LM, each in a fresh process, beside the time
  of each (lm_head_time_ratio).
The machine's load is recorded beside the figures: other jobs on the same cores slow them all.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from damo_lit.cli.common import PROJECT_ROOT, compose, compose_run  # noqa: E402

sys.path.insert(0, str(PROJECT_ROOT))
from experiments.common import key_word, key_words  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "out": str(PROJECT_ROOT / "outputs" / "bench"),
    "quick": False,  # tiny sizes: the smoke test
    "sections": ["sparse", "loader", "cache", "cache_real", "fuse", "tower_chunks", "lm_head"],
    "seed": 0,
    # torch intra-op threads. 1 by default: on a shared 2-core machine two spinning OpenMP threads per
    # process slowed the tiny model 5-10x while other jobs ran; null = torch's default (one per core)
    "threads": 1,
    # sparse_vs_full
    "clips": 3, "clip_size": 128, "clip_fps": 24, "clip_min_seconds": 30.0, "clip_max_seconds": 60.0,
    "num_frames": 24, "repeats": 3,
    # loader_samples_per_s and cache_speedup: a synthetic set of this many videos (default 64x64, 8 fps)
    "videos": 40, "batch_size": 16, "loader_batches": 6, "workers": [0, 1, 2], "decode_videos": 12,
    "cache_steps": 6, "cache_clip_size": 320, "cache_clip_fps": 24,
    # cache_speedup_real_clips: every .mp4 in this folder, `real_records` grounding records each
    "real_videos": str(PROJECT_ROOT.parent / "shared" / "data" / "videos"), "real_records": 16,
    # fuse_time_192_over_24
    "fuse_frames": [24, 48, 96, 192], "fuse_batch": 4, "fuse_repeats": 5,
    # tower_chunk_memory_ratio: a CLIP ViT-B/16-wide tower (2 of its 12 layers) at 224 px, random weights
    "chunk_frames": 256, "chunk_size": 32, "chunk_image": 224,
    "chunk_arch": {"model_type": "clip_vision_model", "hidden_size": 768, "intermediate_size": 3072,
                   "num_hidden_layers": 2, "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
    # lm_head_memory_ratio: Mistral's 32,064-word vocabulary on a narrow one-layer LM; stage-3-like rows
    # (128 text tokens, the last 16 labelled, 32 media tokens)
    "lm_batch": 8, "lm_tokens": 128, "lm_answer_tokens": 16, "lm_media_tokens": 32,
    "lm_arch": {"model_type": "mistral", "vocab_size": 32064, "hidden_size": 512, "intermediate_size": 1024,
                "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 8},
}  # fmt: skip
QUICK: dict[str, Any] = {
    "clips": 1, "clip_size": 64, "clip_fps": 8, "clip_min_seconds": 8.0, "clip_max_seconds": 8.0, "num_frames": 8,
    "repeats": 1, "videos": 10, "batch_size": 2, "loader_batches": 2, "workers": [0], "decode_videos": 2,
    "cache_steps": 2, "cache_clip_size": 96, "cache_clip_fps": 12, "real_records": 2, "fuse_frames": [8, 16], "fuse_batch": 1, "fuse_repeats": 1,
    "chunk_frames": 64, "chunk_size": 8, "chunk_image": 112,
    "lm_batch": 4, "lm_tokens": 64, "lm_answer_tokens": 8, "lm_media_tokens": 8,
    "lm_arch": {"model_type": "mistral", "vocab_size": 16000, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2},
    "chunk_arch": {"model_type": "clip_vision_model", "hidden_size": 128, "intermediate_size": 512,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 112, "patch_size": 8},
}  # fmt: skip
TARGETS = {"sparse_vs_full": (">=", 3.0), "cache_speedup": (">=", 5.0), "cache_speedup_real_clips": (">=", 5.0),
           "fuse_time_192_over_24": ("<=", 10.0)}
FROZEN = ["model.vision.trainable=false", "model.audio.trainable=false"]
WARMUP_STEPS = 2  # the first training steps allocate and warm up; they are not the steady state

log = logging.getLogger("bench")


HELP_WORDS = ("-h", "--help")


def usage() -> str:
    """--help: what the study measures (the docstring), every key with its default, what
    quick=true changes and what the run writes. Needs no GPU and measures nothing."""
    lines = [__doc__.rstrip(), "", "keys (KEY=VALUE words, default after '='; nested dicts replace the default whole):"]
    lines += [f"  {key}={key_word(value)}" for key, value in DEFAULTS.items()]
    lines += ["", "quick=true (the smoke test) sets instead: " + " ".join(f"{k}={key_word(v)}" for k, v in QUICK.items()),
              "", f"sections: {', '.join(SECTIONS)} (all by default, in that order)",
              "", "writes OUT/throughput.json (every figure, the settings, the machine and its load at start and end),",
              "prints the table of figures with their targets, and keeps its work files under OUT (clips/, synth/,",
              "runs/, features*/, synth*/, decoded/, real/): a later run reuses the clips and the synthetic sets."]
    return "\n".join(lines)


def settings(argv: list[str]) -> Any:
    """DEFAULTS, then QUICK when quick=true, then the key=value words of the command line; the
    keys main checks itself (sections, threads) in the form it uses."""
    cli = key_words("bench", argv, DEFAULTS)
    if "sections" in cli:
        cli.sections = section_list(cli.sections)
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), cli)
    if cfg.quick:
        cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.create(QUICK), cli)
    cfg.threads = thread_count(cfg.threads)
    return cfg


def section_list(value: Any) -> list[str]:
    """sections=fuse (one name, as the shell gives it) or sections=[fuse,lm_head]: a list of names
    (a bare string would be taken letter by letter)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return [str(value)] if value not in (None, "") else []
    return [str(name) for name in value]


def thread_count(value: Any) -> int | None:
    """threads=N (N >= 1) or null (torch's default); anything else stops the run, naming the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SystemExit(f"bench: threads={value}: expected a whole number of at least 1, or null (torch's default)")
    return value


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `repeats` calls (after one untimed warm-up call)."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- sparse_vs_full ------------------------------------------------------------------------------
def make_clips(folder: Path, cfg: Any) -> list[Path]:
    """Long clips written by the synthetic generator's writer (kept between runs)."""
    from damo_lit.data.synthetic import SynthConfig, plan_video, render_plan

    synth = SynthConfig(videos=int(cfg.clips), seed=int(cfg.seed), fps=int(cfg.clip_fps), size=int(cfg.clip_size),
                        min_seconds=float(cfg.clip_min_seconds), max_seconds=float(cfg.clip_max_seconds))  # fmt: skip
    paths = []
    for index in range(int(cfg.clips)):
        plan = plan_video(synth, "test", index, index + 1)  # position 0 would be a clip without audio
        path = folder / plan.video
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            render_plan(plan, str(folder))
        paths.append(path)
    return paths


def decode_all_pyav(path: Path, num_frames: int) -> np.ndarray:
    """Decode every frame with PyAV (one thread, RGB), then keep the N uniformly sampled ones."""
    import av

    from damo_lit.data.decode import sample_indices

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames)])


def bench_sparse(cfg: Any, out: Path) -> dict[str, Any]:
    from damo_lit.data.decode import DecodeParams, decode_frames

    clips = make_clips(out / "clips", cfg)
    params = DecodeParams(num_frames=int(cfg.num_frames), frame_size=int(cfg.clip_size))
    rows = []
    for path in clips:
        sparse = median_time(lambda: decode_frames(path, params), int(cfg.repeats))
        full = median_time(lambda: decode_all_pyav(path, int(cfg.num_frames)), int(cfg.repeats))
        a = decode_frames(path, params)[0].transpose(0, 2, 3, 1).astype(np.int16)
        b = decode_all_pyav(path, int(cfg.num_frames)).astype(np.int16)
        rows.append({"clip": path.name, "sparse_s": sparse, "full_s": full, "ratio": full / sparse,
                     "same_frames_mean_abs_diff": float(np.abs(a - b).mean())})  # fmt: skip
    return {
        "sparse_vs_full": statistics.median(r["ratio"] for r in rows),
        "sparse_vs_full_clips": rows,
        "sparse_vs_full_setup": f"{cfg.num_frames} frames of {len(clips)} clips {cfg.clip_min_seconds:g}-"
        f"{cfg.clip_max_seconds:g} s, {cfg.clip_size}x{cfg.clip_size}, {cfg.clip_fps} fps (H.264 ultrafast)",
    }


# -- loader_samples_per_s ------------------------------------------------------------------------
def data_overrides(cfg: Any, root: Path, size: int = 64, fps: int = 8) -> list[str]:
    """The bench's synthetic set (generated once into `root`; the demo's 64x64 at 8 fps unless
    told otherwise), decoded every time."""
    return [f"data.root={root}", f"data.generate.videos={int(cfg.videos)}", f"data.generate.seed={int(cfg.seed)}",
            f"data.generate.size={int(size)}", f"data.generate.fps={int(fps)}",
            "data.decoded_cache_dir=null", f"data.batch_size={int(cfg.batch_size)}"]  # fmt: skip


def bench_loader(cfg: Any, out: Path) -> dict[str, Any]:
    from hydra.utils import instantiate

    from damo_lit.cli.model import read_tiny_vocab
    from damo_lit.data.decode import decode_video
    from damo_lit.models.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(read_tiny_vocab())
    result: dict[str, Any] = {"loader_samples_per_s": {}}
    for workers in cfg.workers:
        data_cfg = compose("train", [*data_overrides(cfg, out / "synth"), f"data.num_workers={int(workers)}",
                                     "data.train_tasks=[caption,grounding,qa,dialogue]"])
        datamodule = instantiate(data_cfg.data, timestamps=data_cfg.timestamps, _convert_="partial")
        datamodule.prepare_data()
        datamodule.set_tokenizer(tokenizer)
        datamodule.setup("fit")
        iterator = iter(datamodule.train_dataloader())
        next(iterator)  # worker start-up is not throughput
        start, samples = time.perf_counter(), 0
        for _ in range(int(cfg.loader_batches)):
            samples += len(next(iterator)["sample_id"])
        result["loader_samples_per_s"][str(workers)] = samples / (time.perf_counter() - start)
        del iterator
    videos = sorted((out / "synth" / "videos").glob("*.mp4"))[: int(cfg.decode_videos)]
    params = datamodule.params
    decode_video(videos[0], params)
    start = time.perf_counter()
    for path in videos:
        decode_video(path, params)
    result["raw_decode_videos_per_s"] = len(videos) / (time.perf_counter() - start)
    result["loader_setup"] = (f"{int(cfg.videos)} synthetic videos 8-20 s 64x64 8 fps, {datamodule.params.num_frames} "
                              f"frames + {datamodule.params.num_audio_segments} audio segments, batch "
                              f"{int(cfg.batch_size)}, {int(cfg.loader_batches)} batches after the first")  # fmt: skip
    return result


# -- cache_speedup --------------------------------------------------------------------------------
class StepTimer:
    """Lightning callback: wall time between consecutive training-batch starts (step + loading)."""

    def __init__(self) -> None:
        import lightning as L

        class _Timer(L.Callback):
            def __init__(inner) -> None:
                inner.starts: list[float] = []

            def on_train_batch_start(inner, trainer, pl_module, batch, batch_idx) -> None:
                inner.starts.append(time.perf_counter())

            def on_train_end(inner, trainer, pl_module) -> None:
                inner.starts.append(time.perf_counter())

        self.callback = _Timer()

    def median_step(self, warmup: int) -> float:
        """Median over the steps after the first `warmup` (allocation and first-call costs)."""
        starts = self.callback.starts
        steps = [b - a for a, b in zip(starts, starts[1:])]
        return statistics.median(steps[warmup:] or steps)


def train_steps(cfg: Any, out: Path, name: str, overrides: list[str], data: list[str] | None = None) -> float:
    """Median stage-3 step time of a short damo_tiny run over `data` (default: the bench's synthetic
    set) with these overrides."""
    from damo_lit.cli.train import build_run

    data = data_overrides(cfg, out / "synth") if data is None else data
    run_cfg = compose_run("train", [
        "stage=stage3_temporal", *FROZEN, *data, "data.num_workers=0", *overrides,
        f"trainer.max_steps={int(cfg.cache_steps) + WARMUP_STEPS}", "trainer.limit_val_batches=0", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "logger=csv", "callbacks.progress_bar=null",
        "callbacks.model_checkpoint=null", "test_after_fit=false", f"seed={int(cfg.seed)}",
    ], out / "runs" / name)  # fmt: skip
    stage, datamodule, trainer = build_run(run_cfg)
    for logger_name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)
    timer = StepTimer()
    trainer.callbacks.append(timer.callback)
    trainer.fit(stage, datamodule=datamodule)
    return timer.median_step(WARMUP_STEPS)


def build_features(cfg: Any, data: list[str], features: Path) -> dict[str, Any]:
    """Run damo-cache over `data` into `features`; what it did and how long it took."""
    from damo_lit.cli.cache import build_cache

    cache_cfg = compose("cache", [*FROZEN, *data, f"out={features}", "num_workers=0",
                                  f"batch_size={int(cfg.batch_size)}"])  # fmt: skip
    start = time.perf_counter()
    report = build_cache(cache_cfg)
    return {"videos": report.videos, "encoded": report.encoded, "seconds": time.perf_counter() - start}


def bench_cache(cfg: Any, out: Path) -> dict[str, Any]:
    # The target figure: synthetic clips at about a Charades video's pixels and rate (320 px, 24 fps),
    # so that decoding costs what it costs on a user's data; the demo's 64x64 8 fps clips beside it.
    size, fps = int(cfg.cache_clip_size), int(cfg.cache_clip_fps)
    sized = data_overrides(cfg, out / f"synth_{size}px_{fps}fps", size, fps)
    sized_features = out / f"features_{size}px_{fps}fps"
    sized_build = build_features(cfg, sized, sized_features)
    sized_decoded = train_steps(cfg, out, f"decode_{size}px", [], sized)
    sized_cached = train_steps(cfg, out, f"features_{size}px", [f"data.features={sized_features}"], sized)

    features = out / "features"
    build = build_features(cfg, data_overrides(cfg, out / "synth"), features)
    decoded = train_steps(cfg, out, "decode", [])
    npz = train_steps(cfg, out, "npz", [f"data.decoded_cache_dir={out / 'decoded'}"])
    cached = train_steps(cfg, out, "features", [f"data.features={features}"])
    # As in the paper's stage 3: the base LM frozen too (damo_tiny trains its random LM), LoRA trains.
    frozen_lm = ["model.llm.trainable=false"]
    decoded_lm = train_steps(cfg, out, "decode_frozen_lm", frozen_lm)
    cached_lm = train_steps(cfg, out, "features_frozen_lm", [*frozen_lm, f"data.features={features}"])
    return {
        "cache_speedup": sized_decoded / sized_cached,
        "cache_speedup_demo_clips": decoded / cached,
        "cache_speedup_vs_decoded_npz": npz / cached,
        "cache_speedup_frozen_lm": decoded_lm / cached_lm,
        "step_s": {f"decode_{size}px": sized_decoded, f"feature_cache_{size}px": sized_cached,
                   "decode": decoded, "decoded_npz_cache": npz, "feature_cache": cached,
                   "decode_frozen_lm": decoded_lm, "feature_cache_frozen_lm": cached_lm},
        "feature_cache_build": build,
        "feature_cache_build_sized": sized_build,
        "cache_setup": f"stage 3, damo_tiny with frozen towers, batch {int(cfg.batch_size)}, 0 workers, "
        f"median of {int(cfg.cache_steps)} steps after {WARMUP_STEPS} warm-up steps; cache_speedup over "
        f"{int(cfg.videos)} synthetic clips of {size}x{size} px at {fps} fps (decoded to the tiny towers' 64 px), "
        f"the rest over the demo's 64x64 8 fps clips",
    }


# -- cache_speedup_real_clips --------------------------------------------------------------------
REAL_QUESTION = "when does it happen?"  # words of the tiny vocabulary; the text barely matters to the step time


def real_clip_records(clips: list[Path], per_clip: int, links: Path) -> list[dict[str, Any]]:
    """`per_clip` DaMO grounding records per clip, windows spread over its duration, each record
    naming its own link to the clip under `links`: the loader keeps its last few videos in memory,
    and a sample must be decoded as it would be in a real set of many videos."""
    from damo_lit.data.decode import probe_duration

    links.mkdir(parents=True, exist_ok=True)
    records = []
    for clip in clips:
        duration = probe_duration(clip)
        if not duration or duration <= 0:
            raise SystemExit(f"bench: cannot read the duration of {clip}; real_videos must hold playable MP4 files")
        for k in range(per_clip):
            link = links / f"{clip.stem}_{k:03d}{clip.suffix}"
            link.unlink(missing_ok=True)
            link.symlink_to(clip.resolve())
            start = round(duration * 0.8 * k / per_clip, 2)
            end = round(min(duration, start + duration * 0.2), 2)
            records.append({"id": link.stem, "video": link.name, "duration": duration, "task": "grounding",
                            "spans": [[start, end]], "turns": [{"role": "user", "content": REAL_QUESTION},
                                                               {"role": "assistant", "content": "it happens {span:0}."}]})  # fmt: skip
    return records


def describe_clip(path: Path) -> str:
    """'name: WxH, fps, seconds, audio' from the file's own streams."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        seconds = float(container.duration or 0) / 1e6
        sound = f"{audio.codec_context.name} {audio.rate} Hz {audio.channels} ch" if audio else "no audio"
        return f"{path.name}: {video.width}x{video.height} {float(video.average_rate or 0):.0f} fps {seconds:.1f} s, {sound}"


def bench_cache_real(cfg: Any, out: Path) -> dict[str, Any]:
    folder = Path(str(cfg.real_videos)).expanduser()
    clips = sorted(folder.glob("*.mp4")) if folder.is_dir() else []
    if not clips:
        reason = f"no .mp4 files in real_videos={folder}"
        print(f"bench: cache_real skipped: {reason}", flush=True)
        return {"cache_real_skipped": reason}
    root = out / "real"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in real_clip_records(clips, int(cfg.real_records), root / "videos"))
    for split in ("train", "val", "test"):
        (root / "annotations" / f"{split}.jsonl").write_text(lines)
    data = ["data=damo_jsonl", f"data.root={root}", f"data.annotations={root / 'annotations'}",
            f"data.video_dir={root / 'videos'}", "data.decoded_cache_dir=null", f"data.batch_size={int(cfg.batch_size)}"]  # fmt: skip
    features = root / "features"
    shutil.rmtree(features, ignore_errors=True)  # the clips may have changed since the last run
    build = build_features(cfg, data, features)
    decoded = train_steps(cfg, out, "real_decode", [], data)
    cached = train_steps(cfg, out, "real_features", [f"data.features={features}"], data)
    return {
        "cache_speedup_real_clips": decoded / cached,
        "step_s_real_clips": {"decode": decoded, "feature_cache": cached},
        "feature_cache_build_real_clips": build,
        "cache_real_setup": f"stage 3 as cache_setup, over {len(clips)} real clips x {int(cfg.real_records)} grounding "
        "records, each record its own link to its clip (decoded every time): " + "; ".join(describe_clip(c) for c in clips),
    }


# -- fuse_time_192_over_24 ------------------------------------------------------------------------
def bench_fuse(cfg: Any, out: Path) -> dict[str, Any]:
    from damo_lit.cli.model import ensure_model_parts
    from damo_lit.models.damo import build_damo

    frames = [int(n) for n in cfg.fuse_frames]
    b = int(cfg.fuse_batch)
    times, tokens, plain, stream_tokens = {}, {}, {}, {}
    gen = torch.Generator().manual_seed(int(cfg.seed))
    for n in frames:
        model_cfg = OmegaConf.to_container(compose("cache", [*FROZEN, f"model.num_frames={n}"]).model, resolve=True)
        ensure_model_parts(model_cfg)
        damo = build_damo(model_cfg).eval()
        m = model_cfg["num_audio_segments"]
        size, mel_t = model_cfg["vision"]["image_size"], model_cfg["audio"]["segment_frames"]
        with torch.no_grad():  # the towers' output shapes for one frame and one segment
            probe = damo.encoder_features(torch.zeros(1, 1, 3, size, size, dtype=torch.uint8),
                                          torch.zeros(1, 1, 80, mel_t))  # fmt: skip
        feats = {
            "vision_global": torch.randn(b, n, *probe["vision_global"].shape[2:], generator=gen),
            "vision_local": torch.randn(b, n, *probe["vision_local"].shape[2:], generator=gen),
            "audio_global": torch.randn(b, m, *probe["audio_global"].shape[2:], generator=gen),
            "audio_local": torch.randn(b, m, *probe["audio_local"].shape[2:], generator=gen),
        }
        duration = torch.full((b,), 60.0)
        times_kw = {"frame_times": torch.linspace(0, 60, n).expand(b, n), "audio_times": torch.linspace(0, 60, m)
                    .expand(b, m), "duration": duration}  # fmt: skip

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return damo.media_embeds(damo.encode_features(**feats, **times_kw), duration)

        times[str(n)] = median_time(forward, int(cfg.fuse_repeats))
        tokens[str(n)] = int(forward().shape[1])
        plain[str(n)], stream_tokens[str(n)] = plain_attention_time(damo, feats, times_kw, int(cfg.fuse_repeats))
    lo, hi = str(min(frames)), str(max(frames))
    return {
        f"fuse_time_{hi}_over_{lo}": times[hi] / times[lo],
        # side by side: what one plain self-attention layer over every stream token costs at the same
        # frame counts (the quadratic growth the Fuseformer's query compression avoids)
        f"plain_attention_time_{hi}_over_{lo}": plain[hi] / plain[lo],
        "fuse_forward_s": times,
        "plain_attention_s": plain,
        "stream_tokens": stream_tokens,
        "llm_tokens": tokens,
        "fuse_setup": f"damo_tiny residual + T-Fuseformer + projector, batch {b}, random tower features, "
        f"{m} audio segments",
    }


def plain_attention_time(damo: Any, feats: dict[str, torch.Tensor], times_kw: dict[str, torch.Tensor],
                         repeats: int) -> tuple[float, int]:
    """(median seconds, tokens) of one self-attention layer at the Fuseformer's width over every token
    of the residual streams (video after the temporal conv, and audio): the reference the
    Fuseformer's per-modality query compression is measured against."""
    with torch.no_grad():
        video = damo.residual.video_stream(feats["vision_global"], feats["vision_local"], times_kw["frame_times"],
                                           torch.ones_like(times_kw["frame_times"], dtype=torch.bool),
                                           times_kw["duration"])  # fmt: skip
    count = int(video.tokens.shape[1]) + int(feats["audio_local"].shape[1] * damo.cfg.residual.audio_tokens)
    width, heads = damo.cfg.fuseformer.hidden, damo.cfg.fuseformer.heads
    attention = torch.nn.MultiheadAttention(width, heads, batch_first=True).eval()
    x = torch.randn(video.tokens.shape[0], count, width)

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return attention(x, x, x, need_weights=False)[0]

    return median_time(forward, repeats), count


# -- tower_chunk_memory_ratio ---------------------------------------------------------------------
def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss(section: str) -> int:
    """Restart the kernel's high-water mark of this process's resident memory (VmHWM) at what it
    holds now, so that the peak read afterwards is what follows (Linux >= 4.0); the RSS now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as err:
        raise RuntimeError(f"bench {section}: cannot reset the peak RSS (/proc/self/clear_refs): {err}") from None
    return _rss_bytes()


def _peak_rss_bytes() -> int:
    """VmHWM: the most resident memory this process has held since start or the last reset."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def _tower_forward_peak(settings: dict[str, Any], chunk_size: int, queue: Any) -> None:
    """In a fresh process: the memory one frozen tower forward adds at its peak, and its time."""
    from damo_lit.models.config import VisionConfig
    from damo_lit.models.encoders import VisionTower

    if settings["threads"]:
        torch.set_num_threads(int(settings["threads"]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(int(settings["seed"]))
    spec = VisionConfig(arch=dict(settings["chunk_arch"]), image_size=int(settings["chunk_image"]), chunk_size=chunk_size)
    tower = VisionTower(spec).eval().to(device)
    size = int(settings["chunk_image"])
    frames = torch.randint(0, 256, (1, int(settings["chunk_frames"]), 3, size, size), dtype=torch.uint8, device=device)
    with torch.no_grad():
        tower(frames[:, :2])  # allocator and kernels warmed up on two frames
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _reset_peak_rss("tower_chunks")
        start = time.perf_counter()
        out = tower(frames)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _peak_rss_bytes()
        seconds = time.perf_counter() - start
    queue.put({"added_mib": (peak - before) / 2**20, "output_mib": out.local.nbytes / 2**20, "seconds": seconds,
               "device": str(device)})  # fmt: skip


def in_fresh_processes(section: str, target: Callable[..., None], cfg: Any, variants: dict[str, Any]) -> dict[str, Any]:
    """target(settings, variant, queue) in a spawned process per variant (a fresh high-water mark
    for each measurement); what each put on the queue, by variant name."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    settings = OmegaConf.to_container(cfg, resolve=True)
    runs = {}
    for name, variant in variants.items():
        queue = context.Queue()
        child = context.Process(target=target, args=(settings, variant, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"bench {section}: the {name} child exited with status {child.exitcode}")
        runs[name] = queue.get()
    return runs


def paired_figures(runs: dict[str, Any], memory: str, time_: str, added: str, seconds: str) -> dict[str, Any]:
    """Two fresh-process runs, the plain one first: the memory ratio plain/bounded, the time ratio
    bounded/plain, and each run's added MiB and seconds under the given names."""
    plain, bounded = runs.values()
    return {memory: plain["added_mib"] / max(bounded["added_mib"], 1e-6), time_: bounded["seconds"] / plain["seconds"],
            added: {k: v["added_mib"] for k, v in runs.items()}, seconds: {k: v["seconds"] for k, v in runs.items()}}


def bench_tower_chunks(cfg: Any, out: Path) -> dict[str, Any]:
    runs = in_fresh_processes("tower_chunks", _tower_forward_peak, cfg,
                              {"all_at_once": 0, f"chunks_of_{int(cfg.chunk_size)}": int(cfg.chunk_size)})  # fmt: skip
    whole = runs["all_at_once"]
    arch = cfg.chunk_arch
    return {
        **paired_figures(runs, "tower_chunk_memory_ratio", "tower_chunk_time_ratio", "tower_forward_added_mib",
                         "tower_forward_s"),
        "tower_chunks_setup": f"frozen CLIP-style tower (hidden {arch.hidden_size}, {arch.num_hidden_layers} layers, "
        f"{arch.num_attention_heads} heads, patch {arch.patch_size}, {cfg.chunk_image} px, random weights) over "
        f"{cfg.chunk_frames} frames on {whole['device']}, each forward in a fresh process; its output (local tokens) "
        f"alone is {whole['output_mib']:.0f} MiB and is counted in both",
    }


# -- lm_head_memory_ratio -------------------------------------------------------------------------
def _lm_loss_peak(settings: dict[str, Any], labelled_only: bool, queue: Any) -> None:
    """In a fresh process: the memory a teacher-forced loss + backward adds at its peak, with the LM
    head at every position (transformers' own loss) or only where the next token is labelled."""
    from damo_lit.models.config import LLMConfig, LoraSettings
    from damo_lit.models.llm import CausalLM

    if settings["threads"]:
        torch.set_num_threads(int(settings["threads"]))
    torch.manual_seed(int(settings["seed"]))
    arch = dict(settings["lm_arch"])
    lm = CausalLM(LLMConfig(arch=arch, lora=LoraSettings(enabled=False), length_buckets=1), video_token_id=5,
                  pad_token_id=0)  # fmt: skip
    batch, tokens, answer = int(settings["lm_batch"]), int(settings["lm_tokens"]), int(settings["lm_answer_tokens"])
    ids = torch.randint(10, int(arch["vocab_size"]), (batch, tokens))
    ids[:, 1] = 5
    labels = ids.clone()
    labels[:, : tokens - answer] = -100  # the answer at the end, as in stage 3
    media = torch.randn(batch, int(settings["lm_media_tokens"]), int(arch["hidden_size"]))
    mask = torch.ones_like(ids)

    def step() -> None:
        if labelled_only:
            loss = lm(ids, mask, labels, media).loss
        else:
            s = lm.splice(ids, mask, media, labels)
            loss = lm.model(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask,
                            position_ids=s.position_ids, labels=s.labels, use_cache=False).loss  # fmt: skip
        loss.backward()
        lm.zero_grad(set_to_none=True)

    step()  # allocator and kernels warmed up
    before = _reset_peak_rss("lm_head")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    queue.put({"added_mib": (_peak_rss_bytes() - before) / 2**20, "seconds": seconds})


def bench_lm_head(cfg: Any, out: Path) -> dict[str, Any]:
    runs = in_fresh_processes("lm_head", _lm_loss_peak, cfg, {"every_position": False, "labelled_positions": True})
    arch = cfg.lm_arch
    positions = int(cfg.lm_tokens) + int(cfg.lm_media_tokens) - 1
    return {
        **paired_figures(runs, "lm_head_memory_ratio", "lm_head_time_ratio", "lm_loss_added_mib", "lm_loss_s"),
        "lm_head_setup": f"{arch.model_type} LM (hidden {arch.hidden_size}, {arch.num_hidden_layers} layer(s), "
        f"vocabulary {arch.vocab_size}, random weights), loss + backward over {cfg.lm_batch} rows of {positions} "
        f"positions with {cfg.lm_answer_tokens} labelled tokens each, on the CPU, each in a fresh process",
    }


# -- the run --------------------------------------------------------------------------------------
SECTIONS = {"sparse": bench_sparse, "loader": bench_loader, "cache": bench_cache, "cache_real": bench_cache_real,
            "fuse": bench_fuse, "tower_chunks": bench_tower_chunks, "lm_head": bench_lm_head}


def environment() -> dict[str, Any]:
    from damo_lit.cli.demo import code_version, commit_label

    rev = commit_label(code_version())
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "git": rev,
            "load_average_at_start": list(os.getloadavg()), "time": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip


def table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Table(title="damo-lit throughput (make bench)")
    for column in ("figure", "value", "target"):
        out.add_column(column)

    def verdict(name: str, value: float) -> str:
        if name not in TARGETS:
            return ""
        op, target = TARGETS[name]
        ok = value >= target if op == ">=" else value <= target
        return f"{op} {target:g} {'ok' if ok else 'MISSED'}"

    for name, value in results.items():
        if isinstance(value, float):
            out.add_row(name, f"{value:.2f}", verdict(name, value))
    for name in ("loader_samples_per_s", "step_s", "step_s_real_clips", "fuse_forward_s", "llm_tokens",
                 "tower_forward_added_mib", "tower_forward_s", "lm_loss_added_mib", "lm_loss_s"):
        for key, value in (results.get(name) or {}).items():
            label = escape(f"{name}[{key}]")  # not rich markup
            out.add_row(label, f"{value:.3f}" if isinstance(value, float) else str(value), "")
    console = Console(width=120)
    console.print(out)
    for name in sorted(k for k in results if k.endswith(("_setup", "_skipped"))):
        console.print(f"{name}: {results[name]}")
    env = results["environment"]
    console.print(f"load average (1 min) at start {env['load_average_at_start'][0]:.2f}, at end "
                  f"{env['load_average_at_end'][0]:.2f} on {env['cpu_count']} cores")


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if any(word in HELP_WORDS for word in words):
        print(usage())
        return 0
    cfg = settings(words)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    unknown = sorted(set(cfg.sections) - set(SECTIONS))
    if unknown or not cfg.sections:
        raise SystemExit(f"bench: unknown section(s) {unknown}; expected some of {sorted(SECTIONS)}" if unknown
                         else f"bench: sections is empty; expected some of {sorted(SECTIONS)}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"environment": environment(), "settings": OmegaConf.to_container(cfg)}
    for name in cfg.sections:
        start = time.perf_counter()
        print(f"bench: {name} ...", flush=True)
        results.update(SECTIONS[name](cfg, out))
        results.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
    results["environment"]["load_average_at_end"] = list(os.getloadavg())
    (out / "throughput.json").write_text(json.dumps(results, indent=2, sort_keys=True))
    table(results)
    print(f"wrote {out / 'throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
