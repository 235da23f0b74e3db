"""Stage 3 at paper size under FSDP: tokens/s, peak GPU memory and the largest batch that fits.

NEEDS GPUs (Lightning's FSDP is CUDA-only); on a machine without one it says so and exits 2.

    python experiments/throughput/fsdp_paper.py [devices=1] [batch_sizes=[1,8,32,64,128]] [steps=6]
    python experiments/throughput/fsdp_paper.py check=true      # CPU: compose + build the strategy only

damo_paper (CLIP ViT-L/14, Whisper-small encoder, 768-wide T-Fuseformer, Mistral-7B + LoRA r=32)
on random weights (every `name_or_path` null: built from the `arch` numbers, nothing downloaded)
in bf16-mixed with conf/trainer/fsdp.yaml (decoder layers and Fuseformer blocks wrapped and
activation-checkpointed; the LM's own gradient checkpointing is turned off so that nothing is
recomputed twice). The tokenizer is a word-level one with Mistral's vocabulary size, so the
embedding and LM head are paper-sized. Batches are random and shaped as the batch contract
(24 frames of 224x224, 8 Whisper segments of 3000 mel frames, `text_tokens` text tokens).

Each batch size runs in its own process (a fresh CUDA context), smallest first, until one runs
out of memory. OUT/fsdp_paper.json is rewritten after each one, so that a run cut short by a time
limit keeps what it measured: the card's name and count, per batch size the median step time
after warm-up, LLM tokens/s (text + media tokens), videos/s, peak memory (max over ranks of
torch.cuda.max_memory_allocated, and reserved), the seconds spent building and fitting, the last
training loss, and the largest batch that fitted. Each child's output goes to OUT/fsdp_paper_b{B}.log.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from omegaconf import OmegaConf  # noqa: E402

from damo_lit.cli.common import PROJECT_ROOT, compose_run  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "out": str(PROJECT_ROOT / "outputs" / "bench"),
    "devices": 1, "batch_sizes": [1, 8, 32, 64, 128], "steps": 6, "warmup": 2, "text_tokens": 128,
    "check": False, "one": None,  # one=B: run a single batch size (the driver's child processes)
    "build_on": "cuda",  # random init on the GPU (a 7B LM takes ~1 min single-threaded on a CPU); cpu falls back
}  # fmt: skip
RANDOM_WEIGHTS = ["model.vision.name_or_path=null", "model.audio.name_or_path=null",
                  "model.text_encoder.name_or_path=null", "model.llm.name_or_path=null"]  # fmt: skip


def word_tokenizer(folder: Path, vocab_size: int) -> Path:
    """A saved word-level tokenizer with `vocab_size` entries (the paper LM's embedding size)."""
    from damo_lit.models.tokenizer import build_word_tokenizer

    if not (folder / "tokenizer.json").is_file():
        words = [f"w{i}" for i in range(vocab_size - 16)] + [str(i) for i in range(10)]
        build_word_tokenizer(words).save_pretrained(str(folder))
    return folder


def overrides(cfg: Any, tokenizer: Path, run_dir: Path) -> list[str]:
    return [
        "model=damo_paper", "stage=stage3_temporal", "trainer=fsdp", *RANDOM_WEIGHTS,
        f"model.llm.tokenizer={tokenizer}", "model.llm.offline=true", "model.llm.gradient_checkpointing=false",
        f"trainer.devices={int(cfg.devices)}", f"trainer.max_steps={int(cfg.steps) + int(cfg.warmup)}",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "logger=csv",
        "callbacks.progress_bar=null", "callbacks.model_checkpoint=null", "++trainer.enable_checkpointing=false",
        "test_after_fit=false",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip


def random_batches(model_cfg: Any, batch: int, text_tokens: int, pad_id: int, video_id: int) -> Any:
    """An endless loader of random batches shaped as the batch contract."""
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    n, m = int(model_cfg.num_frames), int(model_cfg.num_audio_segments)
    size, mel = int(model_cfg.vision.image_size), int(model_cfg.audio.segment_frames)

    class Random(IterableDataset):
        def __iter__(self):
            gen = torch.Generator().manual_seed(0)
            while True:
                ids = torch.randint(100, 1000, (batch, text_tokens), generator=gen)
                ids[:, 1] = video_id
                labels = ids.clone()
                labels[:, : text_tokens // 2] = -100
                yield {
                    "frames": torch.randint(0, 255, (batch, n, 3, size, size), dtype=torch.uint8, generator=gen),
                    "frame_times": torch.linspace(0, 60, n).expand(batch, n).contiguous(),
                    "frame_mask": torch.ones(batch, n, dtype=torch.bool),
                    "audio_mel": torch.randn(batch, m, 80, mel, generator=gen),
                    "audio_times": torch.linspace(0, 60, m).expand(batch, m).contiguous(),
                    "audio_mask": torch.ones(batch, m, dtype=torch.bool),
                    "duration": torch.full((batch,), 60.0),
                    "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                }  # fmt: skip

    return DataLoader(Random(), batch_size=None)


def run_one(cfg: Any, batch: int, tokenizer: Path, out: Path) -> dict[str, Any]:
    """Fit `steps` + `warmup` steps at one batch size; the figures of this rank."""
    import lightning as L
    import torch

    from damo_lit.cli.train import build_run

    run_cfg = compose_run("train", overrides(cfg, tokenizer, out / f"fsdp_b{batch}"), out / f"fsdp_b{batch}")
    began = time.perf_counter()
    built_on = str(cfg.build_on)
    try:
        with torch.device(built_on):
            stage, _, trainer = build_run(run_cfg)
    except Exception as err:  # noqa: BLE001 - a build that needs the CPU still gets measured
        if built_on == "cpu":
            raise
        print(f"building on {built_on} failed ({err!r}); building on the CPU instead", file=sys.stderr, flush=True)
        built_on = "cpu"
        torch.cuda.empty_cache()
        stage, _, trainer = build_run(run_cfg)
    built = time.perf_counter()
    print(f"built on {built_on} in {built - began:.1f} s", flush=True)
    starts: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            torch.cuda.synchronize()
            starts.append(time.perf_counter())

        def on_train_end(self, *args: Any) -> None:
            torch.cuda.synchronize()
            starts.append(time.perf_counter())

    trainer.callbacks.append(Timer())
    tok = stage.tokenizer
    loader = random_batches(run_cfg.model, batch, int(cfg.text_tokens), tok.pad_token_id,
                            tok.convert_tokens_to_ids("<video>"))  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(stage, train_dataloaders=loader)
    steps = [b - a for a, b in zip(starts, starts[1:])][int(cfg.warmup):]
    step = statistics.median(steps)
    peak = torch.tensor(float(torch.cuda.max_memory_allocated()), device="cuda")
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    world = trainer.world_size
    loss = trainer.callback_metrics.get("train/loss")  # finite: the bf16 steps computed something sane
    tokens = batch * (int(cfg.text_tokens) + stage.model.llm_tokens_per_video - 1) * world
    return {"batch_per_device": batch, "devices": world, "step_s": step, "llm_tokens_per_s": tokens / step,
            "videos_per_s": batch * world / step, "peak_memory_gib": float(peak) / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "built_on": built_on,
            "build_s": built - began, "fit_s": time.perf_counter() - built,
            "last_loss": float(loss) if loss is not None else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), OmegaConf.from_dotlist(list(sys.argv[1:] if argv is None
                                                                                   else argv)))  # fmt: skip
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(out / "fsdp_tokenizer", 32064)
    if cfg.check:  # CPU: the recipe composes and the strategy builds; no model, no GPU
        from hydra.utils import instantiate

        with tempfile.TemporaryDirectory() as tmp:
            run_cfg = compose_run("train", overrides(cfg, tokenizer, Path(tmp)), tmp)
            strategy = instantiate(run_cfg.trainer.strategy)
        print(f"check: {type(strategy).__name__}, precision {run_cfg.trainer.precision}, "
              f"model {run_cfg.model.llm.arch.model_type} x{run_cfg.model.llm.arch.num_hidden_layers} layers")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("fsdp_paper.py needs a CUDA GPU (Lightning's FSDP runs on CUDA only); nothing measured.",
              file=sys.stderr)  # fmt: skip
        return 2
    if cfg.one is not None:
        result = run_one(cfg, int(cfg.one), tokenizer, out)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("RANK", "0")) == 0:
            (out / f"fsdp_paper_b{int(cfg.one)}.json").write_text(json.dumps(result))
        return 0
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                              "settings": OmegaConf.to_container(cfg), "runs": [], "largest_batch_that_fits": None}
    for batch in cfg.batch_sizes:
        args = [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv), f"one={int(batch)}"]
        log = out / f"fsdp_paper_b{int(batch)}.log"
        result_file = out / f"fsdp_paper_b{int(batch)}.json"
        result_file.unlink(missing_ok=True)
        print(f"batch {int(batch)}: running (log {log})", flush=True)
        with log.open("w") as sink:
            done = subprocess.run(args, stdout=sink, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0 or not result_file.is_file():
            text = log.read_text(errors="replace")
            oom = "out of memory" in text.lower()
            report["runs"].append({"batch_per_device": int(batch), "failed": "out of memory" if oom else text[-2000:]})
            (out / "fsdp_paper.json").write_text(json.dumps(report, indent=2))
            print(f"batch {int(batch)}: {'out of memory' if oom else 'failed, see ' + str(log)}", flush=True)
            break
        report["runs"].append(json.loads(result_file.read_text()))
        report["largest_batch_that_fits"] = int(batch)
        (out / "fsdp_paper.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report["runs"][-1]), flush=True)
    print(f"wrote {out / 'fsdp_paper.json'}: {report['gpu']} x{report['gpus']}, "
          f"largest batch per device {report['largest_batch_that_fits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
