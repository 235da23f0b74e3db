"""A word-level tokenizer for the tiny embedded model, built offline from a word list.

Real models bring their own tokenizer through `from_pretrained`; the tiny default has none to
download, so it gets a small word-level vocabulary (one token per word, number or punctuation
mark). Numbers 0-199 are single tokens, which is what relative timestamps (0-99) need.
The result is a `PreTrainedTokenizerFast`, so that it is saved and reloaded through the same
`save_pretrained` / `from_pretrained` path as any real tokenizer.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, VIDEO_TOKEN)


def build_word_tokenizer(words: Iterable[str], model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Build a lower-casing word-level tokenizer whose vocabulary is SPECIAL_TOKENS + `words`.

    Text is split on whitespace and before/after each punctuation mark ("3.2" -> "3", ".", "2");
    words outside the vocabulary become `<unk>`.
    """
    vocab: dict[str, int] = {}
    for token in list(SPECIAL_TOKENS) + [w.strip().lower() for w in words]:
        if token and token not in vocab:
            vocab[token] = len(vocab)
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[VIDEO_TOKEN],
        model_max_length=model_max_length,
        padding_side="right",
    )
