"""The transformers backend on a tiny random causal LM that the test builds and saves itself.

A random model cannot write JSON: the test checks the path (chat template, generation, bounded
re-asking, the reject count) and that a cached rerun neither generates nor even loads the model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from damo_lit.augment.hf_backend import TransformersBackend, render_prompt
from damo_lit.augment.items import QuestionSpec
from damo_lit.augment.output import OutputError
from damo_lit.augment.pipeline import run_augment
from damo_lit.augment.sources import load_videos
from damo_lit.models.tokenizer import build_word_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def save_tiny_lm(path: Path, seed: int = 0) -> Path:
    """A random one-layer Llama and a word tokenizer with a chat template, saved to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_word_tokenizer("when does the man woman a what happens [ ] { } : , type question answer".split())
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


def test_chat_template_or_transcript(tiny_lm: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "When?"}]
    assert render_prompt(tokenizer, messages) == "<|system|> Be brief.\n<|user|> When?\n<|assistant|>"
    tokenizer.chat_template = None
    assert render_prompt(tokenizer, messages) == "System: Be brief.\n\nUser: When?\n\nAssistant:"


def test_generation_rejects_and_cache(tiny_lm: Path, anet_file: Path, tmp_path: Path) -> None:
    videos = load_videos(anet_file, "activitynet").videos[:2]
    cache = tmp_path / "cache"
    backend = TransformersBackend(str(tiny_lm), temperature=0.8, max_new_tokens=6, max_parse_retries=1,
                                  cache_dir=str(cache))
    summary = run_augment(videos, backend, QuestionSpec(), tmp_path / "hf.jsonl", source_format="activitynet",
                          progress=False)
    assert backend.generate_calls == 4  # 2 videos x (first try + 1 re-ask)
    assert summary.records == 0 and summary.rejects == {"malformed_reply": 2}
    assert summary.requests == 4 and summary.generator == f"transformers:{tiny_lm}"
    assert len(list(cache.glob("*/*.json"))) == 4

    rerun = TransformersBackend(str(tiny_lm), temperature=0.8, max_new_tokens=6, max_parse_retries=1,
                                cache_dir=str(cache))
    again = run_augment(videos, rerun, QuestionSpec(), tmp_path / "hf2.jsonl", source_format="activitynet",
                        progress=False)
    assert rerun.generate_calls == 0 and rerun._model is None
    assert again.cache_hits == 4 and again.rejects == {"malformed_reply": 2}


def test_missing_model_is_a_clear_error(tmp_path: Path, anet_file: Path) -> None:
    from damo_lit.augment.backend import BackendError

    videos = load_videos(anet_file, "activitynet").videos[:1]
    backend = TransformersBackend(str(tmp_path / "no_such_model"), max_parse_retries=0)
    with pytest.raises(BackendError, match="backend.model="):
        run_augment(videos, backend, QuestionSpec(), tmp_path / "x.jsonl", source_format="activitynet", progress=False)


def _run_once(model: str, cache: Path, out: Path, videos: list) -> tuple[TransformersBackend, object]:
    backend = TransformersBackend(model, temperature=0.8, max_new_tokens=4, max_parse_retries=0, cache_dir=str(cache))
    return backend, run_augment(videos, backend, QuestionSpec(), out, source_format="activitynet", progress=False)


def test_a_local_model_is_known_by_its_folder_and_its_files(
    tmp_path: Path, anet_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two projects, each with its own model at ./llm: the same relative path is not the same model
    videos = load_videos(anet_file, "activitynet").videos[:1]
    cache = tmp_path / "cache"
    for name, seed in (("a", 0), ("b", 1)):
        save_tiny_lm(tmp_path / name / "llm", seed)
    monkeypatch.chdir(tmp_path / "a")
    first, _ = _run_once("./llm", cache, tmp_path / "a.jsonl", videos)
    assert first.generate_calls == 1
    monkeypatch.chdir(tmp_path / "b")
    other, summary = _run_once("./llm", cache, tmp_path / "b.jsonl", videos)
    assert other.generate_calls == 1 and summary.cache_hits == 0  # not answered with a's replies
    assert summary.generator == f"transformers:{tmp_path / 'b' / 'llm'}"  # the records say which model it was
    same, summary = _run_once("./llm", cache, tmp_path / "b2.jsonl", videos)
    assert same.generate_calls == 0 and summary.cache_hits == 1  # b's own replies are reused

    # retrained in place: other bytes, and a later modification time, under the same names
    weights = tmp_path / "b" / "llm" / "model.safetensors"
    stat = weights.stat()
    save_tiny_lm(tmp_path / "b" / "llm", seed=2)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    retrained, summary = _run_once("./llm", cache, tmp_path / "b3.jsonl", videos)
    assert retrained.generate_calls == 1 and summary.cache_hits == 0
    with pytest.raises(OutputError, match="other settings: backend.weights"):  # b.jsonl came from the old weights
        _run_once("./llm", cache, tmp_path / "b.jsonl", videos)


def test_a_hub_name_stays_as_it_is() -> None:
    plain = TransformersBackend("Qwen/Qwen2.5-1.5B-Instruct", dtype="bfloat16")
    pinned = TransformersBackend("Qwen/Qwen2.5-1.5B-Instruct", dtype="bfloat16", revision="a1b2c3")
    assert plain.model == pinned.model == "Qwen/Qwen2.5-1.5B-Instruct"
    assert plain.identity() == {"dtype": "bfloat16"}
    assert pinned.identity() == {"revision": "a1b2c3", "dtype": "bfloat16"}
    assert pinned.fingerprint()["revision"] == "a1b2c3"
