"""damo_paper at the paper's widths and input shapes takes a stage-3 training step on the CPU.

Summaries build damo_paper on the meta device, and FSDP at full size needs GPUs
(experiments/throughput/fsdp_paper.py); this test runs the real thing in between: CLIP
ViT-L/14 widths over 24 frames of 224x224, Whisper-small widths over 8 segments of 3000 mel
frames, the 768-wide T-Fuseformer at depth 4 (192 video / 64 audio queries, 128 fusion tokens),
the Q-Former into Mistral-7B's 4096-wide embeddings with its 32064-word vocabulary and LoRA
r=32, in bf16-mixed, on random weights. Only the towers' and the LM's layer counts are cut to
one, so that a shape or dtype fault at paper size shows up here instead of on a rented GPU.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run
from experiments.throughput.fsdp_paper import RANDOM_WEIGHTS, random_batches, word_tokenizer

SHALLOW = ["model.llm.arch.num_hidden_layers=1", "model.vision.arch.num_hidden_layers=1",
           "model.audio.arch.encoder_layers=1", "model.audio.arch.decoder_layers=1",
           "model.text_encoder.arch.num_hidden_layers=1"]  # fmt: skip


class GradientProbe(L.Callback):
    """The loss of each step and which parameters received a gradient at the first one."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.with_grad: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.with_grad:
            self.with_grad = {n for n, p in pl_module.model.named_parameters() if p.grad is not None}


def test_paper_widths_take_a_stage3_step_in_bf16(tmp_path: Path) -> None:
    tokenizer = word_tokenizer(tmp_path / "tokenizer", 32064)
    cfg = compose_run("train", [
        "model=damo_paper", "stage=stage3_temporal", "trainer=cpu", "trainer.precision=bf16-mixed", *RANDOM_WEIGHTS,
        *SHALLOW, f"model.llm.tokenizer={tokenizer}", "model.llm.offline=true", "trainer.max_steps=2",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "logger=csv", "callbacks.progress_bar=null",
        "callbacks.model_checkpoint=null", "test_after_fit=false",
    ], tmp_path / "run")  # fmt: skip
    stage, _, trainer = build_run(cfg)
    model = stage.model
    assert model.llm_tokens_per_video == 32, "the Q-Former's 32 queries are all the LM sees of a video"
    assert model.llm.model.get_input_embeddings().weight.shape == (32064, 4096), "Mistral-7B's embedding table"
    probe = GradientProbe()
    trainer.callbacks.append(probe)
    tok = stage.tokenizer
    loader = random_batches(cfg.model, batch=1, text_tokens=48, pad_id=tok.pad_token_id,
                            video_id=tok.convert_tokens_to_ids("<video>"))  # fmt: skip
    trainer.fit(stage, train_dataloaders=loader)

    assert len(probe.losses) == 2 and all(torch.isfinite(torch.tensor(probe.losses))), probe.losses
    assert probe.losses[0] > 5.0, "a random 32k-word LM starts near ln(32064) = 10.4"
    grads = probe.with_grad
    for prefix in ("fuseformer.", "projector.", "residual."):
        assert any(n.startswith(prefix) for n in grads), f"no gradient reached {prefix}"
    assert any("lora_" in n for n in grads), "LoRA trains in stage 3"
    assert not any(n.startswith(("vision.", "audio.")) for n in grads), "the towers are frozen"
    assert not any("lora_" not in n and n.startswith("llm.") for n in grads), "the base LM is frozen"
