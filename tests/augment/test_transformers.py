"""The transformers backend on a tiny random causal LM that the test builds and saves itself.

A random model cannot write JSON: the test checks the path (chat template, generation, bounded
re-asking, the reject count) and that a cached rerun neither generates nor even loads the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from damo_lit.augment.hf_backend import TransformersBackend, render_prompt
from damo_lit.augment.items import QuestionSpec
from damo_lit.augment.pipeline import run_augment
from damo_lit.augment.sources import load_videos
from damo_lit.models.tokenizer import build_word_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny_lm")
    tokenizer = build_word_tokenizer("when does the man woman a what happens [ ] { } : , type question answer".split())
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
