"""trainer.gradient_clip_val (1.0 in every trainer config) under the recipes the configs ship:
bf16-mixed with the stages' fused AdamW (trainer=gpu, slurm) and FSDP (trainer=fsdp), both of
which Lightning's own clipping refuses at the first step."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import torch

from damo_lit.cli.common import compose_run
from damo_lit.cli.train import build_run


def _stage(tiny_overrides: list[str], tmp_path: Path, precision: str):
    cfg = compose_run("train", ["stage=stage3_temporal", *tiny_overrides, f"trainer.precision={precision}"], tmp_path)
    stage, _, trainer = build_run(cfg)
    assert trainer.gradient_clip_val == 1.0
    stage.trainer = trainer
    params = [p for p in stage.parameters() if p.requires_grad]
    optimizer = stage.optimizer_factory(params)  # the stage config's AdamW
    assert getattr(optimizer, "_step_supports_amp_scaling", False), "the stages' AdamW is fused"
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    return stage, trainer, optimizer, params


def _norm(params) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


def test_bf16_mixed_with_fused_adamw_clips_by_norm(tiny_overrides: list[str], tmp_path: Path) -> None:
    stage, trainer, optimizer, params = _stage(tiny_overrides, tmp_path, "bf16-mixed")
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        stage.clip_gradients(optimizer, gradient_clip_val=1.0, gradient_clip_algorithm="norm")  # Lightning's own
    assert _norm(params) > 100
    stage.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert _norm(params) == pytest.approx(1.0, rel=1e-3)


def test_bf16_mixed_clips_by_value_too(tiny_overrides: list[str], tmp_path: Path) -> None:
    stage, trainer, optimizer, params = _stage(tiny_overrides, tmp_path, "bf16-mixed")
    stage.configure_gradient_clipping(optimizer, 0.5, "value")
    assert max(float(p.grad.abs().max()) for p in params) == pytest.approx(0.5)


def test_fsdp_clips_through_the_root_module(tiny_overrides: list[str], tmp_path: Path) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    stage, trainer, optimizer, params = _stage(tiny_overrides, tmp_path, "32-true")
    strategy = MagicMock(spec=FSDPStrategy)
    stage._trainer = SimpleNamespace(strategy=strategy, precision_plugin=trainer.precision_plugin)
    stage.configure_gradient_clipping(optimizer, 1.0, "norm")
    strategy.model.clip_grad_norm_.assert_called_once_with(1.0)
    assert _norm(params) > 100, "the per-rank norm of torch.nn.utils would be wrong under FSDP: not used"


def test_full_precision_keeps_lightnings_clipping(tiny_overrides: list[str], tmp_path: Path) -> None:
    stage, trainer, optimizer, params = _stage(tiny_overrides, tmp_path, "32-true")
    stage.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert _norm(params) == pytest.approx(1.0, rel=1e-3)
    stage.configure_gradient_clipping(optimizer, None, None)  # clipping off: nothing happens
    assert _norm(params) == pytest.approx(1.0, rel=1e-3)


def test_fp16_grad_scaler_with_fused_adamw_unscales_then_clips(tiny_overrides: list[str], tmp_path: Path) -> None:
    """trainer.precision=16-mixed: Lightning leaves a fused AdamW's gradients scaled and refuses to
    clip them; the stage unscales them through the scaler, clips, and the scaler's step goes on."""
    stage, trainer, optimizer, params = _stage(tiny_overrides, tmp_path, "32-true")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale exists once the loss was scaled
    for p in params:
        p.grad = torch.full_like(p, 10.0 * 1024.0)  # what backward of a scaled loss leaves
    stage._trainer = SimpleNamespace(strategy=trainer.strategy, precision_plugin=SimpleNamespace(scaler=scaler))
    twins = [p.detach().clone().requires_grad_(True) for p in params]  # an unfused AdamW's reference
    reference = torch.optim.AdamW(
        [{"params": [twins[i] for i, p in enumerate(params) if any(p is q for q in group["params"])],
          **{k: group[k] for k in ("lr", "betas", "eps", "weight_decay")}} for group in optimizer.param_groups]
    )
    stage.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert _norm(params) == pytest.approx(1.0, rel=1e-3), "unscaled (10 each), then clipped to norm 1"
    for twin, p in zip(twins, params):
        twin.grad = p.grad.clone()
    scaler.step(optimizer)  # the fused step takes the gradients as unscaled: no second division
    scaler.update()
    reference.step()
    assert scaler.get_scale() == 1024.0, "no inf found: the scale stays"
    for p, twin in zip(params, twins):
        torch.testing.assert_close(p.detach(), twin.detach(), rtol=1e-5, atol=1e-6)


def test_fp16_skips_a_non_finite_step_through_the_scaler(tiny_overrides: list[str], tmp_path: Path) -> None:
    """A step skipped for a non-finite loss under 16-mixed with the fused AdamW: the scaler finds
    the inf, skips the step and halves its scale (cleared gradients made its update assert that it
    had checked none)."""
    stage, trainer, optimizer, params = _stage(tiny_overrides, tmp_path, "32-true")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))
    stage._trainer = SimpleNamespace(strategy=trainer.strategy, precision_plugin=SimpleNamespace(scaler=scaler))
    params[0].grad = None  # a parameter the loss did not reach
    before = [p.detach().clone() for p in params]
    stage._skip_optimizer_step = True
    stage.on_before_optimizer_step(optimizer)
    stage.configure_gradient_clipping(optimizer, 1.0, "norm")
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 512.0, "the inf was found: scale halved"
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b), "no update"
    assert not optimizer.state or all(float(s["step"]) == 0 for s in optimizer.state.values()), "no moment update"

