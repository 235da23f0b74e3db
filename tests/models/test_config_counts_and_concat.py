"""Config counts that must be >= 1, and the concat ablation: no attention, one modality per bin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from damo_lit.models.config import ConfigError, DaMOConfig, FuseformerConfig
from damo_lit.models.fuseformer import ConcatFusion, share_bins
from damo_lit.models.layers import Attention
from damo_lit.models.media import Stream
from tests.models.conftest import tiny_config


def _with(**changes: object) -> dict:
    """The tiny config with dotted keys changed (no parts are built)."""
    cfg = json.loads(json.dumps(tiny_config(Path("/nonexistent"))))
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = cfg
        for key in path:
            node = node[key]
        node[last] = value
    return cfg


@pytest.mark.parametrize(
    "key, value",
    [
        ("projector__queries", 0),
        ("fuseformer__fusion_tokens", 0),
        ("fuseformer__video_queries", 0),
        ("fuseformer__audio_queries", -1),
        ("residual__audio_tokens", 0),
        ("residual__video_tokens", 0),  # 0 is 0 squared: the square check alone let it through
        ("residual__video_tokens", -4),
        ("num_frames", 0),
        ("residual__temporal__groups", 0),
        ("projector__heads", 0),
    ],
)
def test_counts_below_one_name_the_key(key: str, value: int) -> None:
    dotted = key.replace("__", ".")
    with pytest.raises(ConfigError, match=rf"^model\.{dotted}: must be >= 1, got {value}$"):
        DaMOConfig.from_mapping(_with(**{key: value}))


@pytest.mark.parametrize(
    "changes, message",
    [
        # each of these built a model quietly: one blind to the video, all NaN, or a 1-unit layer
        ({"projector__layers": 0, "projector__query_init": "learned"},
         r"projector\.layers: must be >= 1 with projector\.query_init=learned .* got 0"),
        ({"projector__layers": -3}, r"projector\.layers: must be >= 0, got -3"),
        ({"vision__std": [0, 0, 0]}, r"vision\.std: every value must be > 0 .*got \[0\.0, 0\.0, 0\.0\]"),
        ({"fuseformer__mlp_ratio": 0}, r"fuseformer\.mlp_ratio: must be > 0 .*got 0"),
        ({"projector__mlp_ratio": -1}, r"projector\.mlp_ratio: must be > 0"),
        ({"residual__ffn_ratio": -1}, r"residual\.ffn_ratio: must be > 0"),
        ({"text_encoder__embed_dim": 0}, r"text_encoder\.embed_dim: must be >= 1, got 0"),
        ({"llm__lora__alpha": 0}, r"llm\.lora\.alpha: must be > 0"),
        ({"llm__lora__r": 0}, r"llm\.lora\.r: the adapters' rank must be >= 1, got 0"),
        ({"llm__lora__target_modules": []}, r"llm\.lora\.target_modules: empty"),
        ({"fuseformer__dropout": 2}, r"fuseformer\.dropout: a probability in \[0, 1\), got 2"),
        ({"llm__lora__dropout": -0.5}, r"llm\.lora\.dropout: a probability in \[0, 1\)"),
        ({"fuseformer__kind": "concat", "fuseformer__depth": -5}, r"fuseformer\.depth: must be >= 1, got -5"),
        ({"vision__image_size": 0}, r"vision\.image_size: must be >= 1, got 0"),
    ],
)
def test_values_that_built_a_broken_model_name_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^model\.{message}"):
        DaMOConfig.from_mapping(_with(**changes))


def test_window_and_concat_bin_limits_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model.residual.temporal.stride \(3\) must be <= residual.temporal.kernel \(2\)"):
        DaMOConfig.from_mapping(_with(residual__temporal__stride=3))
    with pytest.raises(ConfigError, match=r"model.fuseformer.fusion_tokens: the concat fusion with audio .* >= 2, got 1"):
        DaMOConfig.from_mapping(_with(fuseformer__kind="concat", fuseformer__fusion_tokens=1))
    alone = DaMOConfig.from_mapping(_with(fuseformer__kind="concat", fuseformer__fusion_tokens=1, audio__enabled=False))
    assert alone.fuseformer.fusion_tokens == 1
    more_frames_than_kernel = DaMOConfig.from_mapping(_with(num_frames=1))  # kernel 2: padded, no longer an error
    assert more_frames_than_kernel.residual.temporal.steps(1) == 1


def test_bins_are_shared_in_proportion_with_one_at_least() -> None:
    assert share_bins(4, [6, 4]) == [2, 2]
    assert share_bins(32, [64, 65]) == [16, 16]
    assert share_bins(8, [100, 1]) == [7, 1]
    assert share_bins(8, [1, 100]) == [1, 7]
    assert share_bins(5, [10]) == [5]


def test_concat_has_no_attention_and_never_mixes_modalities() -> None:
    cfg = FuseformerConfig(kind="concat", hidden=8, heads=2, video_queries=3, audio_queries=2, fusion_tokens=4)
    fusion = ConcatFusion(cfg, audio=True)
    assert not any(isinstance(m, Attention) for m in fusion.modules())
    assert {n for n, _ in fusion.named_parameters()} == {"no_audio", "norm.weight", "norm.bias"}
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, generator=g), torch.randn(8, generator=g)
    with torch.no_grad():
        fusion.no_audio.copy_(b)
    # 6 video tokens, 3 audio tokens + the no-audio token: pooled jointly into 4 bins, bin 2 would
    # hold video tokens 5 and audio tokens 0-1
    video = Stream(a.expand(1, 6, 8), torch.ones(1, 6, dtype=torch.bool), torch.linspace(0.05, 0.95, 6)[None])
    audio = Stream(b.expand(1, 3, 8), torch.ones(1, 3, dtype=torch.bool), torch.tensor([[0.2, 0.5, 0.8]]))
    with torch.no_grad():
        media = fusion(video, audio, torch.tensor([10.0]))
        pure_video, pure_audio = fusion.norm(a), fusion.norm(b)
    assert media.fusion.shape == (1, 4, 8)
    for k, expected in enumerate([pure_video, pure_video, pure_audio, pure_audio]):
        torch.testing.assert_close(media.fusion[0, k], expected)
    assert media.fusion_mask is not None and bool(media.fusion_mask.all())
    assert media.fusion_times is not None and media.fusion_times[0].tolist() == pytest.approx([0.23, 0.77, 0.35, 0.8])
    without_audio = ConcatFusion(cfg, audio=False)(video, None, torch.tensor([10.0]))
    assert without_audio.fusion.shape == (1, 4, 8) and without_audio.audio is None  # all bins to video
