"""The `transformers` backend: a local causal LM, by hub name or path, with the same prompt.

The model loads on the first request that the cache cannot answer, so that a fully cached
rerun loads nothing. The tokenizer's chat template is used when it has one; otherwise the
messages are written out as "System: / User: / Assistant:" text.
"""

from __future__ import annotations

import threading
from typing import Any

from damo_lit.augment.backend import BackendError
from damo_lit.augment.cache import cache_key
from damo_lit.augment.llm import LLMBackend, Message


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text: the tokenizer's chat template when it has one, else a plain transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


class TransformersBackend(LLMBackend):
    """Generation with AutoModelForCausalLM + AutoTokenizer (one request at a time)."""

    kind = "transformers"

    def __init__(
        self,
        model: str,
        temperature: float = 0.7,
        top_p: float | None = 0.95,
        max_new_tokens: int = 1024,
        device: str = "cpu",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        max_parse_retries: int = 2,
        cache_dir: str | None = None,
        tolerance: float = 0.25,
    ) -> None:
        params = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
        super().__init__(model, params, cache_dir, max_parse_retries, 1, tolerance)
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = bool(trust_remote_code)
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.generate_calls = 0

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
            self._model = AutoModelForCausalLM.from_pretrained(
                self.model, dtype=self.dtype, trust_remote_code=self.trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise BackendError(f"backend.model={self.model!r} could not be loaded as a causal LM: {err}") from None
        self._model.to(self.device).eval()

    def _complete(self, messages: list[Message], attempt: int) -> str:
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            tok, model = self._tokenizer, self._model
            text = render_prompt(tok, messages)
            has_template = bool(getattr(tok, "chat_template", None))
            inputs = tok(text, return_tensors="pt", add_special_tokens=not has_template).to(self.device)
            temperature = float(self.params.get("temperature", 0.0))
            kwargs: dict[str, Any] = {"max_new_tokens": int(self.params["max_new_tokens"])}
            if temperature > 0:
                # the same (messages, attempt) samples the same reply: reruns and retries are reproducible
                seed = int(cache_key(messages=messages, attempt=attempt)[:8], 16)
                torch.manual_seed(seed)
                kwargs.update(do_sample=True, temperature=temperature, top_p=self.params.get("top_p", 1.0))
            else:
                kwargs["do_sample"] = False
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            with torch.no_grad():
                out = model.generate(**inputs, pad_token_id=pad, **kwargs)
            self.generate_calls += 1
            new_tokens = out[0, inputs["input_ids"].shape[1] :]
            return tok.decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
