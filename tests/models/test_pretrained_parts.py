"""Every transformers part goes through save_pretrained / from_pretrained(local_files_only=True):
the tiny parts, other vision kinds, multimodal LM checkpoints, and Whisper layouts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from damo_lit.cli.model import MANIFEST, ensure_tiny_pretrained, read_tiny_vocab
from damo_lit.models.config import ConfigError, DaMOConfig, LLMConfig, LoraSettings, VisionConfig
from damo_lit.models.encoders import AudioTower, TextEncoder, VisionTower
from damo_lit.models.llm import CausalLM, prepare_tokenizer
from damo_lit.models.tiny import build_tiny_parts
from tests.models.conftest import tiny_config


def _states_equal(a: torch.nn.Module, b: torch.nn.Module, dropped: tuple[str, ...] = ()) -> bool:
    """Same tensors; `dropped` prefixes are parts `a` discards on purpose (e.g. an unused pooler)."""
    sa, sb = a.state_dict(), b.state_dict()
    kept = {k for k in sb if not k.startswith(dropped)}
    return sa.keys() == kept and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_parts_round_trip_through_from_pretrained(tiny_cache: Path, make_damo) -> None:
    folder = tiny_cache / "tiny_models"
    assert {p.name for p in folder.iterdir() if p.is_dir()} == {"vision", "audio", "text_encoder", "llm"}
    for part in ("vision", "audio", "text_encoder", "llm"):
        assert (folder / part / "config.json").is_file() and (folder / part / "model.safetensors").is_file()
    assert (folder / "llm" / "tokenizer.json").is_file()
    cfg = tiny_config(tiny_cache)
    assert cfg["vision"]["name_or_path"] == str(folder / "vision") and cfg["vision"]["offline"] is True
    # the loaded model holds exactly the weights built in memory from the same seed
    parts = build_tiny_parts(cfg, read_tiny_vocab())
    damo = make_damo("llm.lora.enabled=false")  # LoRA renames the wrapped layers' weights
    assert _states_equal(damo.vision.model, parts.vision)
    assert _states_equal(damo.audio.model, parts.audio)
    # damo_tiny pools the mean of the tokens: its text encoder drops BERT's unused pooler.
    assert _states_equal(damo.text_encoder.model, parts.text_encoder, dropped=("pooler.",))
    assert _states_equal(damo.llm.model, parts.llm)
    assert len(damo.tokenizer) == len(parts.tokenizer)
    assert damo.tokenizer.convert_ids_to_tokens(damo.llm.video_token_id) == "<video>"


def test_tiny_build_is_deterministic_and_seeded() -> None:
    cfg = DaMOConfig.from_mapping(tiny_config(Path("/nonexistent")))
    words = read_tiny_vocab()
    a, b = build_tiny_parts(cfg, words, seed=0), build_tiny_parts(cfg, words, seed=0)
    c = build_tiny_parts(cfg, words, seed=1)
    assert _states_equal(a.llm, b.llm) and _states_equal(a.vision, b.vision)
    assert not _states_equal(a.llm, c.llm)


def test_ensure_tiny_pretrained_reuses_and_rebuilds(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    folder = ensure_tiny_pretrained(tmp_path / "tiny", cfg)
    stamp = (folder / "llm" / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_pretrained(tmp_path / "tiny", cfg) == folder
    assert (folder / "llm" / "model.safetensors").stat().st_mtime_ns == stamp  # up to date: untouched
    cfg["llm"]["arch"]["num_hidden_layers"] = 1  # other architecture numbers: rebuilt
    ensure_tiny_pretrained(tmp_path / "tiny", cfg)
    assert json.loads((folder / "llm" / "config.json").read_text())["num_hidden_layers"] == 1
    assert json.loads((folder / MANIFEST).read_text())["arch"]["llm"]["num_hidden_layers"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiny-")]  # no staging left behind


def test_a_run_waits_for_the_tiny_parts_another_run_builds(tmp_path: Path) -> None:
    """Two runs started side by side on a fresh clone: the second waits for the first's build and
    takes its folder as it is (it used to build too and replace the folder the first was reading)."""
    import logging
    import shutil
    import threading

    from damo_lit.locks import folder_lock

    cfg = tiny_config(tmp_path)
    built = ensure_tiny_pretrained(tmp_path / "built", cfg)
    waiting = threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            waiting.set()

    handler, logger = Waiting(), logging.getLogger("damo_lit.locks")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    folder, got = tmp_path / "tiny", []
    try:
        with folder_lock(folder, "building"):  # the first run, building
            second = threading.Thread(target=lambda: got.append(ensure_tiny_pretrained(folder, cfg)))
            second.start()
            assert waiting.wait(60), "the second run did not wait for the first one's build"
            shutil.copytree(built, folder)
            (folder / "in use by the first run").touch()
        second.join(60)
    finally:
        logger.removeHandler(handler)
    assert got == [folder] and (folder / "in use by the first run").is_file(), "the folder was built again"


def test_a_model_without_audio_shares_the_tiny_folder(tmp_path: Path) -> None:
    """model.audio.enabled=false (the no-audio ablation, run beside the full model) reuses the
    folder as it is: it must not rebuild it without the audio tower, and its LM is the full model's."""
    import copy

    cfg = tiny_config(tmp_path)
    folder = ensure_tiny_pretrained(tmp_path / "tiny", cfg)
    stamp = (folder / "audio" / "model.safetensors").stat().st_mtime_ns
    no_audio = copy.deepcopy(cfg)
    no_audio["audio"]["enabled"] = False
    no_audio["text_encoder"]["enabled"] = False
    assert ensure_tiny_pretrained(tmp_path / "tiny", no_audio) == folder
    assert (folder / "audio" / "model.safetensors").stat().st_mtime_ns == stamp
    words = read_tiny_vocab()
    assert _states_equal(build_tiny_parts(cfg, words).llm, build_tiny_parts(no_audio, words).llm)


def test_tiny_vocab_must_fit_the_arch() -> None:
    cfg = tiny_config(Path("/nonexistent"))
    cfg["llm"]["arch"]["vocab_size"] = 50
    with pytest.raises(ConfigError, match=r"model.llm.arch.vocab_size=50"):
        build_tiny_parts(cfg, read_tiny_vocab())


def _vision_cfg(**kw) -> VisionConfig:
    return VisionConfig(**{"image_size": 32, "trainable": False, **kw})


def test_clip_tower_loads_from_a_full_clip_checkpoint(tmp_path: Path) -> None:
    """openai/clip-vit-large-patch14 is a full CLIPModel checkpoint: the vision half loads."""
    clip = CLIPModel(
        CLIPConfig(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1),
            projection_dim=16,
        )
    ).eval()
    clip.save_pretrained(tmp_path / "clip")
    tower = VisionTower(_vision_cfg(kind="clip", name_or_path=str(tmp_path / "clip")))
    frames = torch.randint(0, 256, (1, 2, 3, 48, 40), dtype=torch.uint8)
    out = tower(frames)
    assert out.global_.shape == (1, 2, 32) and out.local.shape == (1, 2, 16, 32)
    ref = clip.vision_model(pixel_values=tower.preprocess(frames[0])).pooler_output
    torch.testing.assert_close(out.global_[0], ref)


@pytest.mark.parametrize(
    "kind, arch, tokens",
    [
        ("siglip", {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}, 16),
        ("resnet", {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
                    "layer_type": "basic"}, 16),
        ("eva_clip", {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}, 16),
    ],
)
def test_vision_kinds_save_load_and_encode(tmp_path: Path, kind: str, arch: dict, tokens: int) -> None:
    built = VisionTower(_vision_cfg(kind=kind, arch=arch))
    built.model.save_pretrained(tmp_path / kind)
    loaded = VisionTower(_vision_cfg(kind=kind, name_or_path=str(tmp_path / kind), trust_remote_code=kind == "eva_clip"))
    assert _states_equal(built.model, loaded.model)
    frames = torch.randint(0, 256, (2, 3, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = loaded.eval()(frames, mask)
    assert loaded.num_tokens == tokens
    assert out.local.shape == (2, 3, tokens, loaded.dim) and out.global_.shape == (2, 3, loaded.dim)
    assert torch.count_nonzero(out.local[~mask]) == 0 and torch.count_nonzero(out.local[mask]) > 0


CLIP_VISION_ARCH = {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}


def test_eva_clip_global_is_the_post_normed_cls_as_clips() -> None:
    """EVA-CLIP's global feature is the post-layernormed CLS (its pooler output), as CLIP's; a
    remote-code tower that returns only its hidden states gets its post_layernorm applied."""
    torch.manual_seed(0)
    tower = VisionTower(_vision_cfg(kind="eva_clip", arch=CLIP_VISION_ARCH)).eval()
    vision_model = getattr(tower.model, "vision_model", tower.model)
    with torch.no_grad():  # a post-norm that is not near the identity
        vision_model.post_layernorm.weight.normal_()
        vision_model.post_layernorm.bias.normal_()
    frames = torch.randint(0, 256, (1, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = tower(frames)
        ref = vision_model(pixel_values=tower.preprocess(frames[0]))
        torch.testing.assert_close(out.global_[0], ref.pooler_output)
        torch.testing.assert_close(out.local[0], ref.last_hidden_state[:, 1:])
        plain_forward = vision_model.forward
        vision_model.forward = lambda **kw: (plain_forward(**kw).last_hidden_state,)  # no pooler
        torch.testing.assert_close(tower(frames).global_[0], ref.pooler_output)


@pytest.mark.parametrize("use_head", [True, False])
def test_siglip_global_is_its_pooling_head_or_the_mean(use_head: bool) -> None:
    """SigLIP has no CLS: the attention-pooling head's output, else the mean of its (post-normed)
    tokens; every token is local."""
    arch = {**CLIP_VISION_ARCH, "model_type": "siglip_vision_model", "vision_use_head": use_head}
    tower = VisionTower(_vision_cfg(kind="siglip", arch=arch)).eval()
    frames = torch.randint(0, 256, (1, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = tower(frames)
        ref = tower.model(pixel_values=tower.preprocess(frames[0]))
    expected = ref.pooler_output if use_head else ref.last_hidden_state.mean(1)
    torch.testing.assert_close(out.global_[0], expected)
    torch.testing.assert_close(out.local[0], ref.last_hidden_state)


def test_eva_clip_needs_remote_code_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.vision.trust_remote_code"):
        VisionTower(_vision_cfg(kind="eva_clip", name_or_path=str(tmp_path)))


@pytest.mark.parametrize("layout", ["conditional_generation", "model", "encoder"])
def test_whisper_encoder_loads_from_every_checkpoint_layout(tmp_path: Path, layout: str) -> None:
    cfg = WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=16, max_target_positions=8,
                        vocab_size=60, num_mel_bins=80, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    full = WhisperForConditionalGeneration(cfg).eval()
    saved = {"conditional_generation": full, "model": full.model, "encoder": full.model.encoder}[layout]
    saved.save_pretrained(tmp_path / "w")
    from damo_lit.models.config import AudioConfig

    tower = AudioTower(AudioConfig(name_or_path=str(tmp_path / "w"), segment_frames=32)).eval()
    mel = torch.randn(1, 2, 80, 32)
    out = tower(mel)
    ref = full.model.encoder(mel[0]).last_hidden_state
    torch.testing.assert_close(out.local[0], ref)
    torch.testing.assert_close(out.global_[0], ref.mean(1))
    with pytest.raises(ConfigError, match=r"model.audio.segment_frames=3000.*exactly 32 mel frames"):
        AudioTower(AudioConfig(name_or_path=str(tmp_path / "w"), segment_frames=3000))


def test_llm_loads_from_a_multimodal_checkpoint(tmp_path: Path) -> None:
    """llava-hf/llava-v1.6-mistral-7b-hf style: the language model is extracted, vision left behind."""
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    llava = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text.to_dict(), image_token_index=63)).eval()
    llava.save_pretrained(tmp_path / "llava")
    lm = CausalLM(LLMConfig(name_or_path=str(tmp_path / "llava"), lora=LoraSettings(enabled=False)))
    ids = torch.tensor([[1, 5, 9, 12]])
    torch.testing.assert_close(lm.model(input_ids=ids).logits, llava(input_ids=ids).logits)
    assert not any("vision" in n for n, _ in lm.model.named_parameters())


def test_a_checkpoint_of_the_wrong_kind_is_an_error(tiny_cache: Path) -> None:
    """Loading the BERT text encoder as the LM must not give a silently random LM head."""
    with pytest.raises(ValueError, match=r"lacks .* weight"):
        CausalLM(LLMConfig(name_or_path=str(tiny_cache / "tiny_models" / "text_encoder"), lora=LoraSettings(enabled=False)))


def test_missing_folder_names_the_config_key(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=r"model.vision.name_or_path=.*could not be loaded"):
        VisionTower(_vision_cfg(name_or_path=str(tmp_path / "nothing")))


def test_prepare_tokenizer_adds_video_and_pad_and_the_lm_grows(tiny_cache: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(WordLevel({"<unk>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>")
    assert tok.pad_token is None and "<video>" not in tok.get_vocab()
    prepare_tokenizer(tok)
    assert tok.pad_token == "<unk>"
    video_id = tok.convert_tokens_to_ids("<video>")
    assert tok("a <video> b")["input_ids"] == [2, video_id, 3]
    lm = CausalLM(
        LLMConfig(arch={"model_type": "llama", "vocab_size": 4, "hidden_size": 16, "intermediate_size": 32,
                        "num_hidden_layers": 1, "num_attention_heads": 2}, lora=LoraSettings(enabled=False)),
        vocab_size=len(tok), video_token_id=video_id, pad_token_id=tok.pad_token_id,
    )
    assert lm.model.get_input_embeddings().weight.shape[0] == len(tok) == 5


def test_text_encoder_features(make_damo) -> None:
    damo = make_damo()
    enc = damo.tokenizer(["a red circle appears", "a tone"], return_tensors="pt", padding=True)
    feats = damo.encode_text(enc.input_ids, enc.attention_mask)
    assert feats.shape == (2, damo.cfg.text_encoder.embed_dim)
    assert not torch.allclose(feats[0], feats[1])
    assert isinstance(damo.text_encoder, TextEncoder)


def test_meta_build_touches_no_weights() -> None:
    from damo_lit.models.damo import build_damo

    cfg = tiny_config(Path("/nonexistent"))  # the tiny folders do not exist: nothing is read
    damo = build_damo(cfg, meta=True)
    assert all(p.device.type == "meta" for p in damo.parameters())
    assert damo.tokenizer is None


def test_random_build_creates_parameters_in_the_configured_dtype() -> None:
    """A random (arch-only) part is built in its dtype, not in float32 and cast: half the memory
    for a paper-size LM. Rotary inv_freq stays float32, as from_pretrained leaves it."""
    from transformers import AutoModelForCausalLM

    from damo_lit.models.config import PretrainedSpec
    from damo_lit.models.pretrained import load_or_build

    arch = {"model_type": "mistral", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}  # fmt: skip
    seen: list[torch.dtype] = []

    def build(config):
        seen.append(torch.get_default_dtype())
        return AutoModelForCausalLM.from_config(config)

    spec = PretrainedSpec(arch=arch, dtype="bfloat16")
    model = load_or_build(spec, "model.llm", meta=False, load=None, build=build)
    assert seen == [torch.bfloat16], "parameters are created in bfloat16, not cast afterwards"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    assert torch.get_default_dtype() == torch.float32, "the default dtype is restored"

    def broken(config):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        load_or_build(spec, "model.llm", meta=False, load=None, build=broken)
    assert torch.get_default_dtype() == torch.float32, "restored after a failed build too"


def test_config_errors_name_the_dotted_key() -> None:
    cfg = tiny_config(Path("/nonexistent"))
    bad = json.loads(json.dumps(cfg))
    bad["fuseformer"]["dept"] = 4
    with pytest.raises(ConfigError, match=r"model.fuseformer: unknown key\(s\) dept; expected some of .*depth"):
        DaMOConfig.from_mapping(bad)
    bad = json.loads(json.dumps(cfg))
    bad["fuseformer"]["depth"] = "two"
    with pytest.raises(ConfigError, match=r"model.fuseformer.depth: expected an integer, got 'two'"):
        DaMOConfig.from_mapping(bad)
    bad = json.loads(json.dumps(cfg))
    bad["fuseformer"]["kind"] = "mamba"
    with pytest.raises(ConfigError, match=r"model.fuseformer.kind: expected one of tfuseformer, concat"):
        DaMOConfig.from_mapping(bad)
    bad = json.loads(json.dumps(cfg))
    bad["residual"]["video_tokens"] = 6
    with pytest.raises(ConfigError, match=r"model.residual.video_tokens: must be a square"):
        DaMOConfig.from_mapping(bad)
    ok = DaMOConfig.from_mapping(cfg)
    assert dataclasses.asdict(ok)["fuseformer"]["depth"] == cfg["fuseformer"]["depth"]
    assert ok.vision.mean == tuple(cfg["vision"]["mean"])


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_llm_families_take_lora_and_media(tmp_path: Path, model_type: str) -> None:
    arch = {"model_type": model_type, "vocab_size": 40, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
    built = CausalLM(LLMConfig(arch=arch, lora=LoraSettings(enabled=False)))
    built.model.save_pretrained(tmp_path / model_type)
    lm = CausalLM(
        LLMConfig(name_or_path=str(tmp_path / model_type), lora=LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])),
        video_token_id=39, pad_token_id=0, eos_token_id=1,
    )
    assert lm.lora_parameters() and all("lora_" not in n for n, _ in built.model.named_parameters())
    ids = torch.tensor([[0, 0, 5, 39, 7], [5, 6, 39, 7, 8]])
    mask = (ids != 0).long()
    media = torch.randn(2, 3, 32)
    assert lm(ids, mask, None, media).logits.shape == (2, 7, 40)
    assert torch.isfinite(lm(ids, mask, ids.masked_fill(ids == 0, -100), media).loss)
    new = lm.generate(ids, mask, media, max_new_tokens=3, eos_token_id=None)
    assert new.shape == (2, 3)


# A stand-in for an EVA-CLIP checkpoint on the hub: the model class ships as code beside the
# weights (auto_map), a full CLIP-style model whose vision half returns a plain tuple without a
# pooled output and keeps its final norm as `post_layernorm`.
REMOTE_EVA_CODE = '''
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel


class TinyEvaConfig(PretrainedConfig):
    model_type = "tiny_eva_clip"

    def __init__(self, hidden_size=32, image_size=32, patch_size=8, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.image_size, self.patch_size = hidden_size, image_size, patch_size


class TinyEvaVision(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.patch = nn.Conv2d(3, d, config.patch_size, config.patch_size)
        self.cls = nn.Parameter(torch.randn(d))
        self.block = nn.TransformerEncoderLayer(d, 2, 2 * d, batch_first=True, dropout=0.0)
        self.post_layernorm = nn.LayerNorm(d)

    def forward(self, pixel_values):
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1)
        return (self.block(x),)


class TinyEvaClipModel(PreTrainedModel):
    config_class = TinyEvaConfig
    base_model_prefix = "eva"

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = TinyEvaVision(config)
        self.text_projection = nn.Linear(config.hidden_size, 16)
        self.post_init()

    def forward(self, pixel_values):
        return self.vision_model(pixel_values)
'''


def test_eva_clip_loads_remote_code_and_takes_the_post_normed_cls(tmp_path: Path, monkeypatch) -> None:
    """kind=eva_clip goes through AutoModel with trust_remote_code, offline, from a folder whose
    config maps to code shipped beside the weights; the global feature is the CLS after the
    tower's final norm, the local ones the patch tokens."""
    import sys

    import transformers.dynamic_module_utils as remote_code

    # transformers copies remote code into its modules cache ($HF_HOME, under $HOME): a test's own
    monkeypatch.setattr(remote_code, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    folder = tmp_path / "eva"
    folder.mkdir()
    (folder / "modeling_tiny_eva.py").write_text(REMOTE_EVA_CODE)
    monkeypatch.syspath_prepend(str(folder))
    import modeling_tiny_eva

    monkeypatch.delitem(sys.modules, "modeling_tiny_eva")
    model = modeling_tiny_eva.TinyEvaClipModel(modeling_tiny_eva.TinyEvaConfig())
    model.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_tiny_eva.TinyEvaConfig", "AutoModel": "modeling_tiny_eva.TinyEvaClipModel"}
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(ConfigError, match="model.vision.trust_remote_code"):
        VisionTower(_vision_cfg(kind="eva_clip", name_or_path=str(folder)))
    tower = VisionTower(_vision_cfg(kind="eva_clip", name_or_path=str(folder), trust_remote_code=True)).eval()
    assert type(tower.model).__name__ == "TinyEvaClipModel" and tower.num_tokens == 16 and tower.dim == 32
    assert _states_equal(model, tower.model)
    frames = torch.randint(0, 256, (1, 2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = tower(frames)
        hidden = tower.model.vision_model(tower.preprocess(frames[0]))[0]
    torch.testing.assert_close(out.global_[0], tower.model.vision_model.post_layernorm(hidden[:, 0]))
    torch.testing.assert_close(out.local[0], hidden[:, 1:])


def test_parts_that_cannot_be_built_from_their_arch_name_the_key() -> None:
    """A kind whose model class reads another config (siglip over a CLIP arch), numbers that
    transformers refuses, and LoRA targets the LM lacks end in a ConfigError naming the part,
    which the CLIs print in one line, not in a transformers or peft traceback."""
    from damo_lit.models.damo import build_damo

    base = tiny_config(Path("/nonexistent"))
    cases = [
        ({"vision": {**base["vision"], "kind": "siglip"}},
         r"^model\.vision: SiglipVisionModel cannot be built from model\.vision\.arch \(model_type "
         r"'clip_vision_model'\): .*do the part's kind and its arch\.model_type name the same model\?"),
        ({"llm": {**base["llm"], "arch": {**base["llm"]["arch"], "hidden_size": 190}}},
         r"^model\.llm\.arch: transformers cannot build model_type 'llama': .*hidden size \(190\)"),
        ({"llm": {**base["llm"], "lora": {**base["llm"]["lora"], "target_modules": ["foo_proj"]}}},
         r"^model\.llm\.lora: peft cannot add the adapters: Target modules \{'foo_proj'\} not found"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            build_damo({**base, **change}, meta=True)


def test_the_tiny_parts_never_replace_a_folder_of_other_files(tmp_path: Path) -> None:
    """A mistyped --out (or model.tiny_dir) named a folder of the user's: the build replaced it
    whole, deleting its files."""
    from damo_lit.cli.model import NotTinyPartsFolderError

    cfg = tiny_config(tmp_path)
    precious = tmp_path / "precious"
    (precious / "runs").mkdir(parents=True)
    (precious / "runs" / "result.txt").write_text("x")
    with pytest.raises(NotTinyPartsFolderError, match=r"holds other files \(runs\); the tiny parts replace"):
        ensure_tiny_pretrained(precious, cfg)
    assert (precious / "runs" / "result.txt").read_text() == "x"
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(NotTinyPartsFolderError, match="is a file; expected a folder"):
        ensure_tiny_pretrained(a_file, cfg)
    folder = ensure_tiny_pretrained(tmp_path / "tiny", cfg)  # an older build of the parts is replaced, as before
    (folder / MANIFEST).write_text("{}")
    assert ensure_tiny_pretrained(folder, cfg) == folder and json.loads((folder / MANIFEST).read_text()) != {}
