"""The tiny embedded model's transformers parts, random-initialised in memory from `arch`.

Nothing here touches files: the CLI (`damo-model build-tiny`, `ensure_tiny_pretrained`) saves
these parts with `save_pretrained`, and the tiny config then loads them back by folder through
the same `from_pretrained` path as any real checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from damo_lit.models.config import ConfigError, DaMOConfig
from damo_lit.models.encoders import AudioTower, TextEncoder, VisionTower
from damo_lit.models.layers import REL_UNITS, relative_sinusoid
from damo_lit.models.llm import CausalLM
from damo_lit.models.tokenizer import build_word_tokenizer
from damo_lit.models.damo import RELATIVE_TIME_TOKENS


@dataclass
class TinyParts:
    """Random-init parts and the word-level tokenizer shared by the LM and the text encoder."""

    vision: PreTrainedModel
    audio: PreTrainedModel
    text_encoder: PreTrainedModel
    llm: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast

    def items(self) -> list[tuple[str, PreTrainedModel]]:
        return [("vision", self.vision), ("audio", self.audio), ("text_encoder", self.text_encoder), ("llm", self.llm)]


def _with_tokens(arch: dict[str, Any] | None, tokenizer: PreTrainedTokenizerFast, where: str, **ids: int) -> dict:
    arch = dict(arch or {})
    if "vocab_size" in arch and len(tokenizer) > int(arch["vocab_size"]):
        raise ConfigError(
            f"{where}.arch.vocab_size={arch['vocab_size']} is smaller than the tiny word list "
            f"({len(tokenizer)} tokens with the specials); raise it"
        )
    arch.update(ids)
    return arch


def build_tiny_parts(cfg: DaMOConfig | Mapping[str, Any], words: Iterable[str], seed: int | None = None) -> TinyParts:
    """Random-init every transformers part of `cfg` from its `arch`, deterministically from `seed`.

    Every part is built, `enabled` or not: the flags choose what a model uses, not what the shared
    folder holds, so a run without audio neither rebuilds the folder from under a run with audio
    nor draws its LM from another random stream than the full model (a clean ablation)."""
    cfg = DaMOConfig.from_mapping(cfg)
    tokenizer = build_word_tokenizer(words)
    unsaved = {"name_or_path": None}
    token_ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    llm_cfg = dataclasses.replace(
        cfg.llm,
        **unsaved,
        arch=_with_tokens(cfg.llm.arch, tokenizer, "model.llm", **token_ids),
        lora=dataclasses.replace(cfg.llm.lora, enabled=False),
        gradient_checkpointing=False,
    )
    text_cfg = dataclasses.replace(
        cfg.text_encoder,
        **unsaved,
        enabled=True,
        pooling="cls",  # save a complete BertModel (pooler included), whatever pooling the model uses
        arch=_with_tokens(cfg.text_encoder.arch, tokenizer, "model.text_encoder", pad_token_id=tokenizer.pad_token_id),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed if seed is None else seed)
        vision = VisionTower(dataclasses.replace(cfg.vision, **unsaved)).model
        audio = AudioTower(dataclasses.replace(cfg.audio, **unsaved, enabled=True)).model
        text = TextEncoder(text_cfg).model
        llm = CausalLM(llm_cfg).model
    if cfg.llm.number_embeddings == "sinusoid":
        init_number_embeddings(llm, tokenizer)
    elif cfg.llm.number_embeddings != "random":
        raise ConfigError(f"model.llm.number_embeddings must be random or sinusoid, got {cfg.llm.number_embeddings!r}")
    llm.generation_config.pad_token_id = tokenizer.pad_token_id
    llm.generation_config.eos_token_id = tokenizer.eos_token_id
    return TinyParts(vision, audio, text, llm, tokenizer)


def init_number_embeddings(llm: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Set the input and output embeddings of the tokens "0".."99" to sinusoids of their value
    (the relative-time sinusoid the Fuseformer and projector use), at the RMS of the other rows.

    A random-init LM otherwise has to learn from scratch that "37" lies between "36" and "38";
    with these rows a time that reaches the LM as a sinusoid (or as the embedding of a nearby
    time token) already points at the right numbers. Returns the token ids set.
    """
    ids = [tokenizer.convert_tokens_to_ids(str(k)) for k in range(RELATIVE_TIME_TOKENS)]
    known = [(k, i) for k, i in enumerate(ids) if i is not None and i != tokenizer.unk_token_id]
    if not known:
        return []
    values = torch.tensor([k for k, _ in known], dtype=torch.float32) / REL_UNITS
    rows = torch.tensor([i for _, i in known])
    with torch.no_grad():
        for table in {id(t): t for t in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight)}.values():
            waves = relative_sinusoid(values, table.shape[1])
            rms = table.float().pow(2).mean().sqrt()
            table[rows] = (waves * rms / waves.pow(2).mean().sqrt()).to(table.dtype)
    return [i for _, i in known]
