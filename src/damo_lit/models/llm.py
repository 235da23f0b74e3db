"""The LLM wrapper (module groups `llm` and `lora`): any transformers causal LM, LoRA via peft,
and the splice of the soft-prompt tokens into the sequence at its single `<video>` token.

Splicing replaces the `<video>` token of each sequence with K media embeddings, so every
sequence grows by K - 1 and padding stays where it was (right for training, left for
generation); the attention mask and labels are expanded alike (labels -100 on media).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, load_peft_weights, set_peft_model_state_dict
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from damo_lit.models.config import ConfigError, LLMConfig
from damo_lit.models.pretrained import load_or_build
from damo_lit.models.tokenizer import VIDEO_TOKEN

IGNORE_INDEX = -100

# A multimodal checkpoint (e.g. llava-hf/llava-v1.6-mistral-7b-hf) holds its language model as
# "language_model.model.*" + "language_model.lm_head.*" (hub layout) or "model.language_model.*"
# + "lm_head.*" (transformers 5 layout); this maps both onto a plain causal LM.
LM_FROM_MULTIMODAL = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^model\.language_model\.": "model.",
}


def _load_causal_lm(name_or_path: str, **kwargs: Any) -> tuple[PreTrainedModel, dict]:
    """AutoModelForCausalLM.from_pretrained, or the language model inside a multimodal checkpoint."""
    config = AutoConfig.from_pretrained(
        name_or_path,
        local_files_only=kwargs.get("local_files_only", False),
        trust_remote_code=kwargs.get("trust_remote_code", False),
    )
    if type(config) in AutoModelForCausalLM._model_mapping:
        return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    text_config = getattr(config, "text_config", None)
    if text_config is None:
        raise ConfigError(
            f"model.llm.name_or_path={name_or_path!r} is a {type(config).__name__}: neither a causal LM nor a "
            "multimodal model with a text_config"
        )
    return AutoModelForCausalLM.from_pretrained(name_or_path, config=text_config, key_mapping=LM_FROM_MULTIMODAL, **kwargs)


def _build_causal_lm(config: PretrainedConfig) -> PreTrainedModel:
    return AutoModelForCausalLM.from_config(config)


def load_tokenizer(name_or_path: str, offline: bool = True) -> PreTrainedTokenizerBase:
    """Load a tokenizer by name or folder and make sure it has `<video>` and a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
    prepare_tokenizer(tokenizer)
    return tokenizer


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add `<video>` as a special token when missing; use unk (else eos) as pad when there is none."""
    if VIDEO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def single_token_numbers(tokenizer: PreTrainedTokenizerBase, limit: int) -> list[int]:
    """The ids of "0", "1", ... while each is a single token (at most `limit` of them)."""
    ids: list[int] = []
    for i in range(limit):
        pieces = tokenizer(str(i), add_special_tokens=False)["input_ids"]
        if len(pieces) != 1:
            break
        ids.append(pieces[0])
    return ids


@dataclass
class SplicedInputs:
    """The LLM inputs after the media tokens replaced `<video>` (length T + K - 1)."""

    inputs_embeds: Tensor  # (B, T + K - 1, D)
    attention_mask: Tensor  # (B, T + K - 1) long
    position_ids: Tensor  # (B, T + K - 1)
    labels: Tensor | None  # (B, T + K - 1), -100 on media positions
    media_positions: Tensor  # (B, K): where the media tokens landed


class CausalLM(nn.Module):
    """A causal LM (optionally peft-LoRA-wrapped) that reads K media embeddings at `<video>`."""

    def __init__(
        self,
        cfg: LLMConfig,
        *,
        meta: bool = False,
        vocab_size: int | None = None,
        video_token_id: int | None = None,
        pad_token_id: int | None = None,
        eos_token_id: int | list[int] | None = None,
        where: str = "model.llm",
    ) -> None:
        super().__init__()
        self.trainable = cfg.trainable
        if isinstance(cfg.length_buckets, bool) or not isinstance(cfg.length_buckets, int) or cfg.length_buckets < 1:
            raise ConfigError(f"{where}.length_buckets: expected an integer >= 1, got {cfg.length_buckets!r}")
        self.length_buckets = cfg.length_buckets
        model = load_or_build(cfg, where, meta=meta, load=_load_causal_lm, build=_build_causal_lm)
        rows = model.get_input_embeddings().weight.shape[0]
        if vocab_size is not None and vocab_size > rows:
            model.resize_token_embeddings(vocab_size)
        if cfg.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # the transformers 5 name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.hidden_size = int(model.get_input_embeddings().weight.shape[1])
        self.video_token_id = video_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id if eos_token_id is not None else model.config.eos_token_id
        self.lora_enabled = cfg.lora.enabled
        if cfg.lora.enabled:
            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=list(cfg.lora.target_modules),
                task_type="CAUSAL_LM",
            )
            with warnings.catch_warnings():  # peft asks the deprecated is_gradient_checkpointing
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                try:
                    model = get_peft_model(model, lora)
                except ValueError as err:  # e.g. target modules the LM does not have
                    raise ConfigError(f"{where}.lora: peft cannot add the adapters: {err}") from err
        self.model: PreTrainedModel | PeftModel = model

    # -- parameters ---------------------------------------------------------------------------
    def base_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if "lora_" not in n]

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if "lora_" in n]

    def embed_tokens(self, ids: Tensor) -> Tensor:
        return self.model.get_input_embeddings()(ids)

    # -- LoRA adapters ------------------------------------------------------------------------
    def save_lora(self, path: str, state_dict: dict[str, Tensor] | None = None) -> None:
        """Save the LoRA adapter alone in peft's format (adapter_config.json + adapter_model.safetensors).

        Without `state_dict`, peft's save_pretrained reads the model. With it (the LoRA tensors,
        keyed as the peft model's state_dict names them), those values are written in the same
        format: under FSDP they are gathered beforehand, collectively, and peft's own selection of
        adapter keys, which walks the module tree, would not match the wrapped module names."""
        if not isinstance(self.model, PeftModel):
            raise ValueError("model.llm.lora.enabled is false: there is no LoRA adapter to save")
        if state_dict is None:
            self.model.save_pretrained(path)
            _sort_target_modules(Path(path) / "adapter_config.json")
            return
        adapter = self.model.active_adapter
        tensors = {_without_adapter_name(k, adapter): v.contiguous() for k, v in state_dict.items() if "lora_" in k}
        if not tensors:
            raise ValueError(f"save_lora({path!r}): the state_dict holds no LoRA tensors")
        config = copy.deepcopy(self.model.peft_config[adapter])
        config.inference_mode = True  # as peft saves it
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = self.model.base_model.model.__dict__.get("name_or_path") or None
        Path(path).mkdir(parents=True, exist_ok=True)
        config.save_pretrained(path)
        _sort_target_modules(Path(path) / "adapter_config.json")
        save_file(tensors, str(Path(path) / "adapter_model.safetensors"), metadata={"format": "pt"})

    def load_lora(self, name_or_path: str) -> None:
        """Load adapter weights saved by `save_lora` (or any peft adapter of the same shape)."""
        if not isinstance(self.model, PeftModel):
            raise ValueError("model.llm.lora.enabled is false: build with LoRA on to load an adapter")
        device = next(self.model.parameters()).device
        weights = load_peft_weights(name_or_path, device=str(device))
        result = set_peft_model_state_dict(self.model, weights)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise ValueError(f"adapter {name_or_path!r} does not fit this LLM: unexpected {unexpected[:5]}")

    # -- splicing -----------------------------------------------------------------------------
    def splice(
        self, input_ids: Tensor, attention_mask: Tensor, media_embeds: Tensor, labels: Tensor | None = None
    ) -> SplicedInputs:
        """Replace each sequence's single `<video>` token with its K media embeddings."""
        if self.video_token_id is None:
            raise ValueError("the LLM was built without a <video> token id (build_damo passes the tokenizer's)")
        is_video = input_ids == self.video_token_id
        counts = is_video.sum(1)
        bad = (counts != 1).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"input_ids: sample(s) {bad} hold {[int(counts[i]) for i in bad]} <video> tokens "
                f"(id {self.video_token_id}); each sequence needs exactly one"
            )
        b, t = input_ids.shape
        k = media_embeds.shape[1]
        where = is_video.float().argmax(1)  # (B,)
        text = self.embed_tokens(input_ids.masked_fill(is_video, 0))
        steps = torch.arange(t, device=input_ids.device)
        new_index = steps[None] + (steps[None] > where[:, None]).long() * (k - 1)  # (B, T)
        keep = ~is_video
        rows = torch.arange(b, device=input_ids.device)[:, None]
        keep_rows, keep_cols = rows.expand(b, t)[keep], new_index[keep]
        media_cols = where[:, None] + torch.arange(k, device=input_ids.device)[None]  # (B, K)
        media_rows = rows.expand(b, k)

        embeds = text.new_zeros(b, t + k - 1, text.shape[-1])
        embeds = embeds.index_put((keep_rows, keep_cols), text[keep])
        embeds = embeds.index_put((media_rows, media_cols), media_embeds.to(text.dtype))
        mask = attention_mask.new_zeros(b, t + k - 1)
        mask = mask.index_put((keep_rows, keep_cols), attention_mask[keep])
        mask = mask.index_put((media_rows, media_cols), torch.ones_like(media_cols, dtype=mask.dtype))
        new_labels = None
        if labels is not None:
            new_labels = labels.new_full((b, t + k - 1), IGNORE_INDEX)
            new_labels = new_labels.index_put((keep_rows, keep_cols), labels[keep])
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        return SplicedInputs(embeds, mask, positions, new_labels, media_cols)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, labels: Tensor | None, media_embeds: Tensor
    ) -> CausalLMOutputWithPast:
        """Teacher-forced pass over the spliced sequence. With labels: the loss alone, the mean
        next-token loss over labels != -100 (`_labelled_loss`); without: the logits at every position."""
        spliced = self.splice(input_ids, attention_mask, media_embeds, labels)
        if spliced.labels is not None:
            return CausalLMOutputWithPast(loss=self._labelled_loss(spliced))
        return self.model(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            position_ids=spliced.position_ids,
            use_cache=False,  # a teacher-forced pass needs no KV cache; under activation checkpointing a
        )  # cache filled by the forward would be filled again by the recompute (keys twice as long)

    def _labelled_loss(self, spliced: SplicedInputs) -> Tensor:
        """The mean next-token loss over every labelled token, as one full pass gives it, for less.

        The LM head runs only at the positions whose next token is labelled in some row of a pass
        (`logits_to_keep`): media, prompts and padding get no vocabulary-wide logits, whose float32
        gradient was the largest buffer of a paper-size step (7.3 GiB at batch 384). With
        `length_buckets` > 1 the rows, sorted by length, go through that many passes, each cut after
        its longest row (training padding is on the right, so what is cut is padding)."""
        assert spliced.labels is not None
        mask = spliced.attention_mask
        steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        lengths = (mask.bool() * steps).amax(1)  # one past each row's last real token
        total = spliced.inputs_embeds.new_zeros(())
        count = 0
        for rows in torch.tensor_split(torch.argsort(lengths), min(self.length_buckets, len(lengths))):
            if len(rows) == 0:
                continue
            width = max(int(lengths[rows].max()), 2)
            targets = spliced.labels[rows, 1:width]  # position p predicts token p + 1
            keep = (targets != IGNORE_INDEX).any(0).nonzero().flatten()
            if keep.numel() == 0:  # nothing labelled: one position keeps the graph (loss 0, zero gradients)
                keep = torch.tensor([width - 2], device=mask.device)
            logits = self.model(
                inputs_embeds=spliced.inputs_embeds[rows, :width],
                attention_mask=mask[rows, :width],
                position_ids=spliced.position_ids[rows, :width],
                use_cache=False,
                logits_to_keep=keep,
            ).logits  # (rows, len(keep), vocab)
            total = total + F.cross_entropy(logits.flatten(0, 1).float(), targets[:, keep].flatten(),
                                            ignore_index=IGNORE_INDEX, reduction="sum")  # fmt: skip
            count += int((targets != IGNORE_INDEX).sum())
        return total / max(count, 1)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Tensor,
        prompt_attention_mask: Tensor,
        media_embeds: Tensor,
        max_new_tokens: int = 32,
        **kwargs: Any,
    ) -> Tensor:
        """New token ids (B, <= max_new_tokens) after the left-padded prompts; greedy by default."""
        spliced = self.splice(prompt_ids, prompt_attention_mask, media_embeds)
        kwargs.setdefault("do_sample", False)
        kwargs.setdefault("pad_token_id", self.pad_token_id)
        kwargs.setdefault("eos_token_id", self.eos_token_id)
        return self.model.generate(
            inputs_embeds=spliced.inputs_embeds,
            attention_mask=spliced.attention_mask,
            max_new_tokens=max_new_tokens,
            **kwargs,
        )


def _without_adapter_name(key: str, adapter: str) -> str:
    """'x.q_proj.lora_A.default.weight' -> 'x.q_proj.lora_A.weight': the key peft writes to disk
    (the adapter name only where it follows a lora_* component, never inside a module name)."""
    parts = key.split(".")
    kept = [part for i, part in enumerate(parts) if not (part == adapter and i > 0 and parts[i - 1].startswith("lora_"))]
    return ".".join(kept)


def _sort_target_modules(config_file: Path) -> None:
    """peft keeps target_modules as a set and writes it in the set's iteration order, which
    changes with the process's string hash seed (and with a copy of the set): sorted, the same
    adapter gives the same adapter_config.json in every run, so that saved adapters can be diffed."""
    config = json.loads(config_file.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
