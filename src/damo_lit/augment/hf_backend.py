"""The `transformers` backend: a local causal LM, by hub name or path, with the same prompt.

The model loads on the first request that the cache cannot answer, so that a fully cached
rerun loads nothing. The tokenizer's chat template is used when it has one; otherwise the
messages are written out as "System: / User: / Assistant:" text. A model in a local folder is
known by its absolute path and a signature of its files (names, sizes, modification times), so
that another folder's `./llm`, or weights retrained in place, never get the old cached replies.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from damo_lit.augment.backend import BackendError, Generation
from damo_lit.augment.cache import cache_key
from damo_lit.augment.llm import LLMBackend, Message


def render_prompt(tokenizer: Any, messages: list[Message]) -> str:
    """The prompt text: the tokenizer's chat template when it has one, else a plain transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


def files_signature(path: Path) -> str:
    """A SHA-256 of the names, sizes and modification times of a local model's files (weights,
    config, tokenizer), read from their metadata only: cheap however many GB the weights are.
    Hidden entries (.git, .cache) are left out: they change without the model changing."""
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = sorted((str(p.relative_to(path)), p) for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    entries = []
    for name, file in files:
        stat = file.stat()
        entries.append([name, stat.st_size, stat.st_mtime_ns])
    return cache_key(files=entries)


def resolve_model(model: str, revision: str | None = None) -> tuple[str, dict[str, Any]]:
    """(what to load, what identifies its weights): a local path becomes absolute and is signed by
    its files; a hub name stays as it is, with its revision when one is configured."""
    identity: dict[str, Any] = {"revision": revision} if revision else {}
    path = Path(model).expanduser()
    if not model or not path.exists():  # a hub name ("" is refused by LLMBackend)
        return model, identity
    path = path.resolve()
    return str(path), {**identity, "weights": files_signature(path)}


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
        revision: str | None = None,
    ) -> None:
        params = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens}
        name, self.weights = resolve_model(str(model or ""), revision)
        super().__init__(name, params, cache_dir, max_parse_retries, 1, tolerance)
        self.revision = revision
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = bool(trust_remote_code)
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.generate_calls = 0

    def identity(self) -> dict[str, Any]:
        """The weights (a local folder's signature, a hub revision) and the dtype they are loaded in
        (another precision is another quantisation): replies of other weights are not reused."""
        return {**self.weights, "dtype": self.dtype}

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        common = {"trust_remote_code": self.trust_remote_code, **({"revision": self.revision} if self.revision else {})}
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model, **common)
            self._model = AutoModelForCausalLM.from_pretrained(self.model, dtype=self.dtype, **common)
        except (OSError, ValueError) as err:
            raise BackendError(f"backend.model={self.model!r} could not be loaded as a causal LM: {err}") from None
        self._model.to(self.device).eval()

    def _complete(self, messages: list[Message], attempt: int, gen: Generation) -> str:
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
            gen.sent()
            with torch.no_grad():
                out = model.generate(**inputs, pad_token_id=pad, **kwargs)
            self.generate_calls += 1
            new_tokens = out[0, inputs["input_ids"].shape[1] :]
            return tok.decode(new_tokens, skip_special_tokens=True)

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
