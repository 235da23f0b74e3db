"""Stage 3 at paper size under FSDP: tokens/s, peak GPU memory and the largest batch that fits.

NEEDS GPUs (Lightning's FSDP is CUDA-only); on a machine without one it says so and exits 2
(--help and check=true need none).

    python experiments/throughput/fsdp_paper.py --help
    python experiments/throughput/fsdp_paper.py [devices=1] [batch_sizes=[1,8,32,64,128]] [steps=6]
    python experiments/throughput/fsdp_paper.py resume=true [resume_batch=8]   # save + resume at paper size
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

resume=true checks the FSDP checkpoint at paper size instead, in two processes: the first fits
`steps` + `warmup` steps at `resume_batch` and saves Lightning's sharded checkpoint (timed, its
size on disk measured); the second resumes from it (resume_from's path through trainer.fit),
gathers the trainable weights before its first step and compares them with the weights.safetensors
the first one wrote, then trains two more steps. OUT/fsdp_resume.json holds the figures;
OUT/fsdp_resume_{save,resume}.log the children's output. The checkpoint is deleted afterwards
unless keep_checkpoint=true. `extra=[key=value,...]` adds Hydra overrides to every run (tests
run this mode on the CPU with a shallow model and the test-only CPU FSDP strategy).
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

sys.path.insert(0, str(PROJECT_ROOT))
from experiments.common import key_word, key_words  # noqa: E402

DEFAULTS: dict[str, Any] = {
    "out": str(PROJECT_ROOT / "outputs" / "bench"),
    "devices": 1, "batch_sizes": [1, 8, 32, 64, 128], "steps": 6, "warmup": 2, "text_tokens": 128,
    "check": False, "one": None,  # one=B: run a single batch size (the driver's child processes)
    "build_on": "cuda",  # random init on the GPU (a 7B LM takes ~1 min single-threaded on a CPU); cpu falls back
    "extra": [],
    "resume": False, "resume_batch": 8, "phase": None, "keep_checkpoint": False,  # phase: the resume children
}  # fmt: skip
KEY_HELP = {
    "out": "folder of the results, logs and the word tokenizer (fsdp_tokenizer/)",
    "devices": "GPUs per run (trainer.devices)",
    "batch_sizes": "batch sizes per device, tried smallest first until one runs out of memory",
    "steps": "timed steps per batch size", "warmup": "untimed steps before them",
    "text_tokens": "text tokens per sample", "check": "true: compose the recipe and build the strategy only (CPU)",
    "one": "run a single batch size in this process (what the driver's children get)",
    "build_on": "where the random weights are initialised: cuda, or cpu",
    "extra": "Hydra overrides added to every run, e.g. [trainer.precision=32-true]",
    "resume": "true: the sharded save + resume check instead of the batch sizes",
    "resume_batch": "batch size per device of the resume check",
    "phase": "save or resume: one half of the resume check (its children)",
    "keep_checkpoint": "true: keep the resume check's checkpoint",
}


def usage() -> str:
    """--help: the docstring, every key with its default and meaning, and what a run writes.
    Needs no GPU, writes nothing."""
    words = {key: f"{key}={key_word(value)}" for key, value in DEFAULTS.items()}
    width = max(len(word) for word in words.values() if len(word) < 40)
    lines = [__doc__.rstrip(), "", "keys (KEY=VALUE words, each shown with its default):"]
    lines += [f"  {word:<{width}}  {KEY_HELP.get(key, '')}".rstrip() for key, word in words.items()]
    lines += ["", "writes OUT/fsdp_paper.json and OUT/fsdp_paper_b{B}.log (resume=true: OUT/fsdp_resume.json and",
              "OUT/fsdp_resume_{save,resume}.log); OUT/fsdp_tokenizer/ is made once and reused."]
    return "\n".join(lines)


def settings(words: list[str]) -> Any:
    """DEFAULTS merged with the key=value words; an unknown key is an error naming the known ones.
    `hydra.*` words are left out: Lightning's launcher starts the other ranks with this script's
    command line plus `hydra.run.dir=...` when the composed run config has set Hydra up."""
    ours = [word for word in words if not word.startswith("hydra.")]
    return OmegaConf.merge(OmegaConf.create(DEFAULTS), key_words("fsdp_paper", ours, DEFAULTS))


RANDOM_WEIGHTS = ["model.vision.name_or_path=null", "model.audio.name_or_path=null",
                  "model.text_encoder.name_or_path=null", "model.llm.name_or_path=null"]  # fmt: skip


def word_tokenizer(folder: Path, vocab_size: int) -> Path:
    """A saved word-level tokenizer with `vocab_size` entries (the paper LM's embedding size)."""
    from damo_lit.models.tokenizer import build_word_tokenizer

    if not (folder / "tokenizer.json").is_file():
        words = [f"w{i}" for i in range(vocab_size - 16)] + [str(i) for i in range(10)]
        build_word_tokenizer(words).save_pretrained(str(folder))
    return folder


def overrides(cfg: Any, tokenizer: Path, run_dir: Path, checkpoints: Path | None = None,
              max_steps: int | None = None) -> list[str]:
    """The recipe's Hydra overrides; with `checkpoints`, Lightning saves last.ckpt there at the last step."""
    steps = int(cfg.steps) + int(cfg.warmup)
    saving = ([f"callbacks.model_checkpoint.dirpath={checkpoints}", f"callbacks.model_checkpoint.every_n_train_steps={steps}",
               "callbacks.model_checkpoint.save_top_k=0", "callbacks.model_checkpoint.save_last=true"]
              if checkpoints is not None else ["callbacks.model_checkpoint=null", "++trainer.enable_checkpointing=false"])
    return [
        "model=damo_paper", "stage=stage3_temporal", "trainer=fsdp", *RANDOM_WEIGHTS,
        f"model.llm.tokenizer={tokenizer}", "model.llm.offline=true", "model.llm.gradient_checkpointing=false",
        f"trainer.devices={int(cfg.devices)}", f"trainer.max_steps={max_steps or steps}",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "logger=csv",
        "callbacks.progress_bar=null", *saving, "test_after_fit=false",
        f"hydra.run.dir={run_dir}", *cfg.extra,
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


def cuda_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(cfg: Any, run_cfg: Any) -> tuple[Any, Any, str, float]:
    """build_run on `cfg.build_on` (falling back to the CPU): stage, trainer, where, seconds."""
    import torch

    from damo_lit.cli.train import build_run

    began = time.perf_counter()
    built_on = str(cfg.build_on) if torch.cuda.is_available() else "cpu"
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
    seconds = time.perf_counter() - began
    print(f"built on {built_on} in {seconds:.1f} s", flush=True)
    return stage, trainer, built_on, seconds


def loader_for(cfg: Any, run_cfg: Any, stage: Any, batch: int) -> Any:
    tok = stage.tokenizer
    return random_batches(run_cfg.model, batch, int(cfg.text_tokens), tok.pad_token_id,
                          tok.convert_tokens_to_ids("<video>"))  # fmt: skip


def run_one(cfg: Any, batch: int, tokenizer: Path, out: Path) -> dict[str, Any]:
    """Fit `steps` + `warmup` steps at one batch size; the figures of this rank."""
    import lightning as L
    import torch

    run_cfg = compose_run("train", overrides(cfg, tokenizer, out / f"fsdp_b{batch}"), out / f"fsdp_b{batch}")
    stage, trainer, built_on, build_s = build(cfg, run_cfg)
    built = time.perf_counter()
    starts: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            cuda_sync()
            starts.append(time.perf_counter())

        def on_train_end(self, *args: Any) -> None:
            cuda_sync()
            starts.append(time.perf_counter())

    trainer.callbacks.append(Timer())
    torch.cuda.reset_peak_memory_stats()
    trainer.fit(stage, train_dataloaders=loader_for(cfg, run_cfg, stage, batch))
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
            "build_s": build_s, "fit_s": time.perf_counter() - built,
            "last_loss": float(loss) if loss is not None else None}  # fmt: skip


def disk_bytes(path: Path) -> int:
    """The size of a file, or of every file under a folder (a sharded checkpoint)."""
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def resume_phase(cfg: Any, phase: str, tokenizer: Path, out: Path) -> dict[str, Any]:
    """One half of resume=true. save: fit and save last.ckpt (timed). resume: fit from it, compare
    the restored trainable weights with the saved phase's weights.safetensors, train two more steps."""
    import lightning as L
    import torch
    from safetensors.torch import load_file

    from damo_lit.stages.fsdp import uses_fsdp
    from damo_lit.stages.weights import WEIGHTS_FILE, stage_state

    batch, steps = int(cfg.resume_batch), int(cfg.steps) + int(cfg.warmup)
    checkpoints, run_dir = out / "fsdp_resume_checkpoints", out / f"fsdp_resume_{phase}"
    saving = phase == "save"
    run_cfg = compose_run("train", overrides(cfg, tokenizer, run_dir, checkpoints if saving else None,
                                             steps if saving else steps + 2), run_dir)  # fmt: skip
    stage, trainer, built_on, build_s = build(cfg, run_cfg)
    result: dict[str, Any] = {"phase": phase, "batch_per_device": batch, "built_on": built_on, "build_s": build_s}
    marks: dict[str, float] = {}
    before_first_step: dict[str, torch.Tensor] = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            cuda_sync()
            marks["first_step"] = time.perf_counter()
            # the weights before the first step (collective under FSDP: every rank gathers): the
            # restored ones when resuming, the initial ones when saving (training must change them,
            # or a resume that loaded nothing would compare equal)
            root = trainer.strategy.model if uses_fsdp(trainer) else None
            before_first_step.update(stage_state(pl_module.model, pl_module.persistent_names(), root))

    trainer.callbacks.append(Probe())
    save_seconds: list[float] = []
    save_checkpoint = trainer.save_checkpoint

    def timed_save(*args: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        save_checkpoint(*args, **kwargs)
        cuda_sync()
        save_seconds.append(time.perf_counter() - began)

    trainer.save_checkpoint = timed_save  # type: ignore[method-assign]
    ckpt = checkpoints / "last.ckpt"
    if not saving and not ckpt.exists():
        raise FileNotFoundError(f"{ckpt}: the save phase left no checkpoint")
    began = time.perf_counter()
    trainer.fit(stage, train_dataloaders=loader_for(cfg, run_cfg, stage, batch),
                ckpt_path=None if saving else str(ckpt), weights_only=True)  # fmt: skip
    loss = trainer.callback_metrics.get("train/loss")
    result.update({"start_s": marks["first_step"] - began, "global_step": trainer.global_step,
                   "last_loss": float(loss) if loss is not None else None})  # fmt: skip
    if saving:
        if not ckpt.exists():
            raise FileNotFoundError(f"{ckpt}: Lightning's ModelCheckpoint saved nothing at step {steps}")
        result.update({"checkpoint_save_s": sum(save_seconds), "checkpoint_saves": len(save_seconds),
                       "checkpoint_gib": disk_bytes(ckpt) / 2**30, "checkpoint_kind": "folder" if ckpt.is_dir() else "file",
                       "stage_weights_mib": disk_bytes(run_dir / WEIGHTS_FILE) / 2**20})  # fmt: skip
        trained = load_file(str(run_dir / WEIGHTS_FILE))
        result["changed_by_training"] = sum(not torch.equal(trained[k], v) for k, v in before_first_step.items()
                                           if k in trained)
    else:
        saved = load_file(str(out / "fsdp_resume_save" / WEIGHTS_FILE))
        restored = before_first_step
        shared = sorted(saved.keys() & restored.keys())
        diffs = [float((saved[k].float() - restored[k].float()).abs().max()) for k in shared]
        result.update({"restored_tensors": len(restored), "saved_tensors": len(saved), "compared_tensors": len(shared),
                       "restored_equal": len(shared) == len(saved) == len(restored)
                       and all(torch.equal(saved[k], restored[k]) for k in shared),
                       "restored_max_abs_diff": max(diffs) if diffs else None})  # fmt: skip
    return result


def child_stem(one: Any = None, phase: Any = None) -> str:
    """The name of a child's log and result JSON: one batch size, or one phase of the resume check."""
    return f"fsdp_resume_{phase}" if phase is not None else f"fsdp_paper_b{int(one)}"


def run_child(argv: list[str], word: str, out: Path, stem: str) -> dict[str, Any] | str:
    """This script again with `word` added, its output in OUT/<stem>.log: the result JSON it wrote,
    or its log's text when it failed or wrote none."""
    log, result_file = out / f"{stem}.log", out / f"{stem}.json"
    result_file.unlink(missing_ok=True)
    print(f"{stem}: running (log {log})", flush=True)
    with log.open("w") as sink:
        done = subprocess.run([sys.executable, __file__, *argv, word], stdout=sink, stderr=subprocess.STDOUT,
                              text=True)  # fmt: skip
    if done.returncode != 0 or not result_file.is_file():
        return log.read_text(errors="replace")
    return json.loads(result_file.read_text())


def resume_check(cfg: Any, argv: list[str], out: Path) -> dict[str, Any]:
    """resume=true: the save and resume children, one process each; OUT/fsdp_resume.json."""
    import shutil

    import torch

    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                              "settings": OmegaConf.to_container(cfg), "phases": []}  # fmt: skip
    shutil.rmtree(out / "fsdp_resume_checkpoints", ignore_errors=True)
    for phase in ("save", "resume"):
        result = run_child(argv, f"phase={phase}", out, child_stem(phase=phase))
        if isinstance(result, str):
            report["phases"].append({"phase": phase, "failed": result[-3000:]})
            break
        report["phases"].append(result)
        print(json.dumps(result), flush=True)
    if not cfg.keep_checkpoint:
        shutil.rmtree(out / "fsdp_resume_checkpoints", ignore_errors=True)
    (out / "fsdp_resume.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if any(word in ("-h", "--help") for word in words):
        print(usage())
        return 0
    cfg = settings(words)
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

    resuming = bool(cfg.resume) or cfg.phase is not None
    cpu_resume = resuming and "trainer.accelerator=cpu" in cfg.extra  # the tests' CPU FSDP strategy
    if not torch.cuda.is_available() and not cpu_resume:
        print("fsdp_paper.py needs a CUDA GPU (Lightning's FSDP runs on CUDA only); nothing measured.",
              file=sys.stderr)  # fmt: skip
        return 2
    rank_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("RANK", "0")) == 0
    if cfg.one is not None or cfg.phase is not None:
        result = run_one(cfg, int(cfg.one), tokenizer, out) if cfg.phase is None else \
            resume_phase(cfg, str(cfg.phase), tokenizer, out)
        if rank_zero:
            (out / f"{child_stem(cfg.one, cfg.phase)}.json").write_text(json.dumps(result))
        return 0
    if cfg.resume:
        report = resume_check(cfg, words, out)
        failed = [p["phase"] for p in report["phases"] if "failed" in p]
        first, last = report["phases"][0], report["phases"][-1]
        if failed:
            verdict = f"the {failed[0]} phase failed (see OUT/fsdp_resume_{failed[0]}.log)"
        elif not first.get("changed_by_training"):
            verdict = "the save phase's steps changed no trainable weight, so the comparison proves nothing"
        else:
            verdict = "resumed weights equal the saved ones" if last.get("restored_equal") else \
                "RESUMED WEIGHTS DIFFER from the saved ones"
        print(f"wrote {out / 'fsdp_resume.json'}: {report['gpu']}, {verdict}")
        return 0 if verdict.startswith("resumed weights equal") else 1
    report: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
                              "settings": OmegaConf.to_container(cfg), "runs": [], "largest_batch_that_fits": None}
    for batch in cfg.batch_sizes:
        stem = child_stem(one=batch)
        result = run_child(words, f"one={int(batch)}", out, stem)
        if isinstance(result, str):
            oom = "out of memory" in result.lower()
            report["runs"].append({"batch_per_device": int(batch), "failed": "out of memory" if oom else result[-2000:]})
            (out / "fsdp_paper.json").write_text(json.dumps(report, indent=2))
            print(f"batch {int(batch)}: {'out of memory' if oom else f'failed, see {out / stem}.log'}", flush=True)
            break
        report["runs"].append(result)
        report["largest_batch_that_fits"] = int(batch)
        (out / "fsdp_paper.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report["runs"][-1]), flush=True)
    print(f"wrote {out / 'fsdp_paper.json'}: {report['gpu']} x{report['gpus']}, "
          f"largest batch per device {report['largest_batch_that_fits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
