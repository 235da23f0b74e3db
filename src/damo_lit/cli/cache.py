"""damo-cache: the frozen-encoder feature cache (docs/scale.md).

    damo-cache data=synthetic model=damo_tiny [out=DIR] [batch_size=8 num_workers=2 shard_size=64]
    damo-cache data=charades_sta model=damo_paper device=cuda out=/data/features/charades
    damo-cache data=synthetic model=damo_tiny init_from=outputs/demo/stage2 out=DIR
    damo-cache kind=stream data=synthetic out=DIR [data.features=CACHE] [tasks=[grounding]]

Composes conf/cache.yaml (defaults: paths default, model damo_tiny, data synthetic), decodes
every video of every split through the data layer, runs the vision and audio towers on it once
(only they are built, not the LLM: `build_encoders`) and writes the rows into safetensors shards
with a manifest of the encoder config they were made with (and a digest of the tower weights).
An interrupted run (Ctrl-C: exit 130, one line) keeps its finished shards; the same command
continues it. Training then takes `data.features=DIR` (with frozen towers) and skips decoding
and the towers. init_from=STAGE_DIR encodes with the towers of a stage checkpoint (the
tiny model's random towers train in stages 1-2); a run that starts from that checkpoint, and
only such a run, can then read the cache.

kind=stream writes litdata shards instead (damo_lit.data.streaming): one dataset per split and
task, of MP4 bytes plus records, or of cached features when data.features is set; training
streams them with data=streaming data.streaming_dir=DIR on any number of nodes.

Keys (conf/cache.yaml): kind=features|stream, data=<config> and data.* keys, model=<config> and
model.* keys, out=DIR (default: <paths.cache_dir>/<kind>/<data name>), splits=[train,val,test],
init_from=STAGE_DIR, batch_size=8, num_workers=2, shard_size=64 (videos per shard file),
pool_local=auto|true|false, device=auto|cpu|cuda|cuda:N, dtype=null|float32|float16|bfloat16;
kind=stream: tasks=[caption,grounding,qa,dialogue], chunk_bytes=64MB (or 512KB, 1GB, a number of
bytes). The last line printed is the report as JSON: for features out, videos, shards, bytes,
encoded (now), reused (kept from finished shards), bad (video -> why it failed); for a stream out,
kind, samples (split -> task -> count), reused, rewritten, skipped.

Each row records its video file's size, time and SHA-256: a rerun into the same folder re-encodes
the videos whose file changed (another set with the same names, regenerated videos), and training
with data.features refuses a cache whose videos changed since it was written. Train with the
folder damo-cache prints (an absolute path), or with 'data.features=${paths.cache_dir}/features/NAME'
(damo-cache's default out; quoted for the shell): a relative data.features resolves from the
current directory.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from damo_lit.cli.common import compose, integer_problem, stopped_by_ctrl_c, user_errors

log = logging.getLogger("damo_lit.cache")

USAGE = __doc__


def pool_local_tokens(features: dict[str, Any], model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Pool local tokens to the global residual's L' tokens, exactly as the residual would: the
    vision patch grid to a sqrt(L') x sqrt(L') grid, the audio tokens to L' windows."""
    import torch.nn.functional as F

    residual = model_cfg["residual"]
    out = dict(features)
    local = features["vision_local"]  # (B, N, P, D)
    b, n, p, d = local.shape
    side, target = int(round(p**0.5)), int(round(int(residual["video_tokens"]) ** 0.5))
    grid = local.reshape(b * n, side, side, d).permute(0, 3, 1, 2)
    out["vision_local"] = F.adaptive_avg_pool2d(grid, target).flatten(2).transpose(1, 2).reshape(b, n, -1, d)
    if features.get("audio_local") is not None:
        audio = features["audio_local"]  # (B, M, Q, D)
        b, m, q, d = audio.shape
        pooled = F.adaptive_avg_pool1d(audio.reshape(b * m, q, d).transpose(1, 2), int(residual["audio_tokens"]))
        out["audio_local"] = pooled.transpose(1, 2).reshape(b, m, -1, d)
    return out


def _pooled(option: Any, model_cfg: Mapping[str, Any]) -> bool:
    """pool_local: auto pools when it is exact (no feature norm before the residual's pooling)."""
    norm = (model_cfg.get("residual") or {}).get("feature_norm", "none")
    value = str(option).lower()
    if value not in ("auto", "true", "false"):
        raise SystemExit(f"damo-cache: pool_local must be auto, true or false, got {option!r}")
    if value == "true" and norm != "none":
        raise SystemExit(
            f"damo-cache: pool_local=true needs model.residual.feature_norm=none (it is {norm!r}): the feature "
            "norm comes before the residual's pooling, so pooled rows would not reproduce the model"
        )
    return value == "true" or (value == "auto" and norm == "none")


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CACHE_DTYPES = ("float32", "float16", "bfloat16")


def check_settings(cfg: Any) -> None:
    """damo-cache's own keys, checked before any data is read or model built (minutes for
    damo_paper): each mistake is one line naming the key and what it takes."""
    import torch

    from damo_lit.cli.common import unwritable_reason
    from damo_lit.data.sources.base import SPLITS

    def whole(key: str, least: int) -> None:
        problem = integer_problem(cfg, key, least)
        if problem:
            raise SystemExit(f"damo-cache: {problem}")

    unknown = [s for s in cfg.splits if s not in SPLITS]
    if unknown:
        raise SystemExit(f"damo-cache: splits: unknown {unknown}; expected some of {list(SPLITS)}")
    whole("num_workers", 0)
    if cfg.kind == "stream":
        check_stream_settings(cfg)
    if cfg.kind == "features":
        whole("batch_size", 1)
        whole("shard_size", 1)
        if cfg.get("dtype") is not None and str(cfg.dtype) not in CACHE_DTYPES:
            raise SystemExit(f"damo-cache: dtype={cfg.dtype}: expected null or one of {', '.join(CACHE_DTYPES)}")
        device = str(cfg.device)
        try:
            chosen = _device(device)
        except RuntimeError:
            raise SystemExit(f"damo-cache: device={device}: expected auto, cpu, cuda or cuda:N") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"damo-cache: device={device}: this machine has no CUDA GPU (use device=cpu or auto)")
    out = Path(str(cfg.out))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"damo-cache: out={out}: cannot make the output folder ({unwritable_reason(out, err)})") from None


def check_stream_settings(cfg: Any) -> None:
    """kind=stream's own keys: tasks (an unknown one would write an empty stream and succeed) and
    chunk_bytes (litdata would fail on it only once its workers run)."""
    from damo_lit.data.schema import TASKS
    from damo_lit.data.streaming import chunk_bytes_count

    tasks = cfg.get("tasks")
    if isinstance(tasks, str) or not tasks:
        raise SystemExit(f"damo-cache: tasks={tasks}: expected a list of some of {list(TASKS)}, e.g. tasks=[grounding]")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"damo-cache: tasks: unknown {unknown}; expected some of {list(TASKS)}")
    try:
        chunk_bytes_count(cfg.chunk_bytes)
    except ValueError as err:
        raise SystemExit(f"damo-cache: chunk_bytes={cfg.chunk_bytes}: {err}") from None


def _datamodule(cfg: Any) -> Any:
    """The data config's datamodule, its synthetic set generated first when it is absent."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="partial")
    if datamodule.generate is not None and datamodule.root:
        from damo_lit.data.synthetic import ensure_generated

        ensure_generated(datamodule.root, datamodule.generate)
    return datamodule


def build_cache(cfg: Any) -> Any:
    """Fill (or finish) the cache folder `cfg.out`; returns a CacheReport."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from rich.console import Console
    from rich.progress import Progress
    from torch.utils.data import DataLoader

    from damo_lit.cli.model import ensure_model_parts
    from damo_lit.data.collection import load_split
    from damo_lit.data.decode import worker_context
    from damo_lit.data.features import (
        SHARD_DIR, TOWER_WEIGHTS, CacheReport, FeatureCacheWriter, FeatureRow, StampedVideoFiles, encoder_signature,
        ignore_interrupts, keep_list, row_tensors, tower_digest, trainable_towers, video_key,
    )  # fmt: skip
    from damo_lit.models.damo import build_encoders

    check_settings(cfg)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    towers = trainable_towers(model_cfg)
    if towers:
        log.warning("%s: the cache holds these towers' outputs as they are now; training with data.features "
                    "needs them frozen (%s)", ", ".join(towers), " ".join(f"{t}=false" for t in towers))
    pooled = _pooled(cfg.pool_local, model_cfg)
    datamodule = _datamodule(cfg)
    split_keys: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for split in cfg.splits:
        try:
            samples = load_split(datamodule.specs, split).samples
        except FileNotFoundError as err:
            log.warning("split %s skipped: %s", split, err)
            continue
        split_keys[split] = sorted({video_key(s) for s in samples})
        paths.update({video_key(s): s.video_path for s in samples})
    if not paths:
        raise SystemExit(f"damo-cache: data {datamodule.name} has no videos in splits {list(cfg.splits)}")

    ensure_model_parts(model_cfg)
    encoders = build_encoders(model_cfg)
    towers_from = "pretrained"
    if cfg.get("init_from"):
        from damo_lit.stages.weights import inherited_groups, load_stage_weights

        loaded = load_stage_weights(encoders, cfg.init_from, key="init_from", require_some=False).loaded
        towers = [g for g in inherited_groups(encoders, loaded) if g in ("vision", "audio")]
        if not towers:
            raise SystemExit(f"damo-cache: init_from={cfg.init_from} holds no tower weights (vision.*, audio.*); "
                             "the pretrained towers need no init_from")
        towers_from = str(cfg.init_from)
        log.info("towers (%s) from %s", ", ".join(towers), cfg.init_from)
    signature = {**encoder_signature(model_cfg, pooled=pooled), TOWER_WEIGHTS: tower_digest(encoders)}
    writer = FeatureCacheWriter(
        cfg.out, signature, datamodule.params, int(cfg.shard_size),
        info={"model": model_cfg, "data": datamodule.name, "pooled_local": pooled, "towers_from": towers_from,
              "dtype": cfg.get("dtype")},
    )  # fmt: skip
    done = writer.done(paths)
    stale = len((writer.done() & set(paths)) - done)
    if stale:
        log.info("%d video(s) changed since they were cached (or were cached before file stamps were recorded): "
                 "encoding them again", stale)
    todo = [(key, paths[key]) for key in sorted(paths) if key not in done]
    report = CacheReport(out=str(cfg.out), reused=len(paths) - len(todo))
    if todo:
        device = _device(str(cfg.device))
        encoders = encoders.to(device)
        dtype = getattr(torch, str(cfg.dtype)) if cfg.get("dtype") else None
        workers = int(cfg.num_workers)
        loader = DataLoader(
            StampedVideoFiles(todo, datamodule.params, datamodule.decoded_cache_dir), batch_size=int(cfg.batch_size),
            num_workers=workers, collate_fn=keep_list, multiprocessing_context=worker_context() if workers else None,
            worker_init_fn=ignore_interrupts if workers else None,  # Ctrl-C: one line from here, no worker tracebacks
        )  # fmt: skip
        pending: list[FeatureRow] = []
        with Progress(console=Console(stderr=True)) as progress, torch.inference_mode():  # stdout: the report
            task = progress.add_task(f"encoding {len(todo)} videos into {cfg.out}", total=len(todo))
            for batch in loader:
                good = [(key, video, stamp) for key, video, _, stamp in batch if video is not None]
                for key, video, reason, _ in batch:
                    if video is None:
                        writer.mark_bad(key, reason)
                        report.bad[key] = reason
                if good:
                    def stack(name: str) -> torch.Tensor:
                        return torch.from_numpy(np.stack([getattr(v, name) for _, v, _ in good])).to(device)

                    feats = encoders.encoder_features(
                        stack("frames"), stack("audio_mel") if encoders.has_audio else None,
                        stack("frame_mask"), stack("audio_mask") if encoders.has_audio else None,
                    )  # fmt: skip
                    if pooled:
                        feats = pool_local_tokens(feats, model_cfg)
                    for i, (key, video, stamp) in enumerate(good):
                        row = {k: (v[i].to(dtype) if dtype is not None else v[i]) for k, v in feats.items()}
                        pending.append(FeatureRow(key, {**row, **row_tensors(video.to_arrays())}, stamp))
                    report.encoded += len(good)
                while len(pending) >= writer.shard_size:
                    writer.write_shard(pending[: writer.shard_size])
                    pending = pending[writer.shard_size :]
                progress.advance(task, len(batch))
        if pending:
            writer.write_shard(pending)
    if not done and report.encoded == 0:  # a wrong video folder, most likely: not a complete, empty cache
        key, reason = next(iter(sorted(report.bad.items())), ("?", "?"))
        raise SystemExit(f"damo-cache: none of the {len(paths)} videos could be encoded (e.g. {key}: {reason}); "
                         f"check data.video_dir (or data.root) of data {datamodule.name}")
    manifest = writer.finish(split_keys)
    report.shards = len(writer.shards)
    report.videos = int(manifest["videos"])
    report.bytes = sum(path.stat().st_size for path in (Path(str(cfg.out)) / SHARD_DIR).glob("*.safetensors"))
    return report


def build_stream(cfg: Any) -> Any:
    """Write the litdata stream of `cfg.data` into `cfg.out`; returns a StreamReport."""
    from omegaconf import OmegaConf

    from damo_lit.data.streaming import write_stream

    check_settings(cfg)
    datamodule = _datamodule(cfg)
    tasks = list(OmegaConf.to_container(cfg.tasks, resolve=True))
    return write_stream(datamodule, cfg.out, list(cfg.splits), tasks, cfg.chunk_bytes, int(cfg.num_workers))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    bad = [a for a in args if "=" not in a]
    if bad:
        raise SystemExit(f"damo-cache: expected key=value overrides, got {bad}\n{USAGE}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    from damo_lit.data.features import FeatureCacheError

    with user_errors("damo-cache"):
        cfg = compose("cache", args)
    if cfg.kind not in ("features", "stream"):
        raise SystemExit(f"damo-cache: kind must be features or stream, got {cfg.kind!r}")
    kept = ("its finished shards stay in {out}, and the same command encodes only the rest" if cfg.kind == "features"
            else "the sub-streams written in full stay in {out}, and the same command keeps them")
    with user_errors("damo-cache", FeatureCacheError), stopped_by_ctrl_c("damo-cache", kept.format(out=cfg.out)):
        report = build_cache(cfg) if cfg.kind == "features" else build_stream(cfg)
    if cfg.kind == "features":
        print(f"{report.out}: {report.videos} videos in {report.shards} shards, {report.bytes / 1e6:.1f} MB "
              f"(encoded now {report.encoded}, kept {report.reused}, failed {len(report.bad)})")
        failed = report.bad
    else:
        total = sum(n for tasks in report.samples.values() for n in tasks.values())
        print(f"{report.out}: a {report.kind} stream of {total} samples {report.samples} "
              f"(kept complete: {report.reused or 'none'}; left out {len(report.skipped)})")
        failed = report.skipped
    for key, reason in sorted(failed.items())[:20]:
        print(f"  left out: {key}: {reason}")
    print(json.dumps(asdict(report), sort_keys=True))  # last line: the report, for scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
