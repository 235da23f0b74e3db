"""What trains: module groups, per-stage trainable sets, gradients, frozen towers, LoRA adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from damo_lit.cli.train import only_frozen_modules_in_eval_mode
from damo_lit.models.damo import GROUPS, STAGE_TRAINABLE, DaMO
from tests.models.conftest import make_batch


def _loss(damo: DaMO, stage: str) -> torch.Tensor:
    b = make_batch(damo, batch=2, frames=8, segments=8, seed=20)
    b.audio_mask[1] = False
    media = damo.encode(**b.media())
    loss = damo(b.input_ids, b.attention_mask, b.labels, damo.media_embeds(media)).loss
    if stage == "stage1":  # the contrastive term reaches the text encoder and the video head
        text = damo.tokenizer(["a red circle", "a high tone"], return_tensors="pt", padding=True)
        sim = damo.pooled_video(media) @ damo.encode_text(text.input_ids, text.attention_mask).T
        loss = loss + torch.nn.functional.cross_entropy(sim, torch.arange(2))
    return loss


def _groups_with_grad(damo: DaMO) -> dict[str, bool]:
    return {g: any(p.grad is not None and p.grad.abs().sum() > 0 for p in damo.group_parameters(g)) for g in GROUPS}


def test_module_groups_are_exactly_the_eight_and_cover_every_parameter(make_damo) -> None:
    damo = make_damo()
    groups = damo.module_groups()
    assert tuple(groups) == GROUPS
    seen: dict[int, str] = {}
    for name in GROUPS:
        for p in damo.group_parameters(name):
            assert id(p) not in seen, f"parameter in both {seen[id(p)]} and {name}"
            seen[id(p)] = name
    assert set(seen) == {id(p) for p in damo.parameters()}
    assert damo.group_parameters("lora") and all(p.numel() > 0 for p in damo.group_parameters("lora"))


@pytest.mark.parametrize("stage", list(STAGE_TRAINABLE))
@pytest.mark.parametrize("towers_trainable", [True, False])
def test_gradients_reach_exactly_the_stage_groups(make_damo, stage: str, towers_trainable: bool) -> None:
    flag = str(towers_trainable).lower()
    damo = make_damo(f"vision.trainable={flag}", f"audio.trainable={flag}", f"llm.trainable={flag}")
    groups = damo.trainable_groups(stage)
    expected = set(STAGE_TRAINABLE[stage]) | ({"vision", "audio", "llm"} if towers_trainable else set())
    assert set(groups) == expected
    damo.set_trainable(groups)
    damo.train()
    for g in GROUPS:
        flags = {p.requires_grad for p in damo.group_parameters(g)}
        assert flags <= ({True, False} if g == "audio" else {g in expected}), g  # whisper keeps fixed positions
    _loss(damo, stage).backward()
    reached = _groups_with_grad(damo)
    assert {g for g, hit in reached.items() if hit} == expected
    for name, p in damo.named_parameters():
        # frozen weights get no gradient, and every trainable one gets one (DDP needs no
        # find_unused_parameters)
        assert (p.grad is not None) is p.requires_grad, name
    # frozen towers stay in eval mode through .train()
    assert damo.vision.training is towers_trainable
    assert damo.audio.training is towers_trainable
    assert damo.text_encoder.training is (stage == "stage1")
    assert damo.fuseformer.training
    assert damo.residual.training is (stage != "stage4"), "a frozen residual keeps its norms' statistics"
    # so Lightning's "modules in eval mode" warning is noise here, and only here
    assert only_frozen_modules_in_eval_mode(damo)
    damo.fuseformer.eval()
    assert not only_frozen_modules_in_eval_mode(damo)


def test_whisper_fixed_positions_never_train(make_damo) -> None:
    damo = make_damo()
    damo.set_trainable(GROUPS)
    fixed = damo.audio.model.embed_positions.weight
    assert not fixed.requires_grad
    assert all(p.requires_grad for p in damo.group_parameters("residual"))


def test_unknown_group_is_an_error(make_damo) -> None:
    damo = make_damo()
    with pytest.raises(KeyError, match="fusion_former"):
        damo.set_trainable(["fusion_former"])
    with pytest.raises(KeyError, match="stage9"):
        damo.trainable_groups("stage9")


def test_lora_adapter_save_and_reload_gives_identical_logits(make_damo, tmp_path) -> None:
    damo = make_damo()
    damo.eval()
    with torch.no_grad():  # as if trained: LoRA B starts at zero, which would prove nothing
        for p in damo.group_parameters("lora"):
            p.normal_(0, 0.05)
    b = make_batch(damo, batch=2, seed=21)
    with torch.no_grad():
        embeds = damo.media_embeds(damo.encode(**b.media()))
        before = damo(b.input_ids, b.attention_mask, None, embeds).logits
    damo.llm.save_lora(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    fresh = make_damo()
    fresh.eval()
    with torch.no_grad():
        base = fresh(b.input_ids, b.attention_mask, None, embeds).logits
    assert not torch.allclose(base, before)  # the adapter changes the model ...
    fresh.llm.load_lora(str(tmp_path / "adapter"))
    with torch.no_grad():
        after = fresh(b.input_ids, b.attention_mask, None, embeds).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # ... and reloading restores it exactly

    # the adapter is a plain peft adapter: peft alone loads it onto the same base LM
    from peft import PeftModel

    bare = make_damo("llm.lora.enabled=false")
    bare.llm.model = PeftModel.from_pretrained(bare.llm.model, str(tmp_path / "adapter"))
    bare.eval()
    with torch.no_grad():
        torch.testing.assert_close(bare(b.input_ids, b.attention_mask, None, embeds).logits, before, rtol=0, atol=0)


def _lora_layers(damo: DaMO) -> list[torch.nn.Module]:
    """The peft LoRA layers wrapped around the LLM's target projections."""
    from peft.tuners.lora import LoraLayer

    return [m for m in damo.llm.model.modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("alpha", [16, 24])
def test_lora_alpha_is_the_configured_one(make_damo, tmp_path: Path, alpha: int) -> None:
    """model.llm.lora.alpha reaches peft: its config, every layer's scaling alpha / r (used in the
    forward: layer(x) = base(x) + alpha / r * B(A(x))) and the saved adapter_config.json."""
    damo = make_damo(f"llm.lora.alpha={alpha}")
    r = damo.cfg.llm.lora.r
    assert (r, damo.cfg.llm.lora.alpha) == (8, alpha)  # the tiny config's rank; alpha != r, so a swap shows
    config = damo.llm.model.peft_config["default"]
    assert (config.r, config.lora_alpha) == (r, alpha)
    layers = _lora_layers(damo)
    assert {n.rsplit(".", 1)[-1] for n, m in damo.llm.model.named_modules() if m in layers} == {"q_proj", "v_proj"}
    assert all(layer.scaling["default"] == pytest.approx(alpha / r) for layer in layers)

    layer = layers[0].eval()
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_(0, 0.1)  # B starts at zero, which would hide the scale
        x = torch.randn(2, 3, layer.in_features)
        delta = layer(x) - layer.base_layer(x)
        torch.testing.assert_close(delta, alpha / r * layer.lora_B["default"](layer.lora_A["default"](x)))

    damo.llm.save_lora(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (saved["r"], saved["lora_alpha"]) == (r, alpha)
    assert saved["target_modules"] == ["q_proj", "v_proj"], "sorted: peft writes its set in hash-seed order"


def test_lora_off_has_no_lora_group(make_damo) -> None:
    damo = make_damo("llm.lora.enabled=false")
    assert damo.group_parameters("lora") == []
    with pytest.raises(ValueError, match="lora.enabled is false"):
        damo.llm.save_lora("unused")
