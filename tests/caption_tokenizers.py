"""Synthetic tokenizers of the caption stage's models, built in memory: nothing is fetched.

Each word of `WORDS` is one token, so a tiny model can be steered to say words
(tests/annotators/test_captions.py). `vocab_layout` also lays a vocabulary out as a published
one is, at its size with its special tokens at their ids, the rest filler tokens, so that any id a
random model of that vocabulary generates decodes (tests/bench/paper_weights.py).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import transformers as tf

from denseface.model.tiny_sd import bpe_vocab

WORDS = ["a", "photo", "of", "man", "woman", "person", "smiling", "face", "close", "up", "with", "the",
         "in", "suit", "and", "tie", "looking", "at", "camera", "shirt", "black", "white", "red", "blue"]
TINY_BERT_SPECIALS = dict(enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]))  # BLIP/GIT's
GPT2_SPECIALS = {-1: "<|endoftext|>"}  # the last id, as in GPT-2's 50257 (bos = eos = unk)
CLIP_SPECIALS = {-2: "<|startoftext|>", -1: "<|endoftext|>"}  # the last two, as in CLIP's 49408


def vocab_layout(regular: Iterable[str], specials: dict[int, str], size: int | None = None,
                 filler: str = "tok{}") -> dict[str, int]:
    """token -> id: each special at its id (a negative one counts from the end), the regular tokens in
    order at the free ids, and ``filler.format(id)`` at any left up to ``size`` (default: none left)."""
    regular = [t for t in regular if t not in specials.values()]
    size = size or len(specials) + len(regular)
    by_id = {i % size: t for i, t in specials.items()}
    free = (i for i in range(size) if i not in by_id)
    by_id.update((i, t) for t, i in zip(regular, free))  # (regular first: zip leaves the ids it does not use)
    by_id.update((i, filler.format(i)) for i in free)
    vocab = {t: i for i, t in sorted(by_id.items())}
    if len(vocab) != size or len(specials) + len(regular) > size:
        raise ValueError(f"{len(specials)} specials and {len(regular)} tokens do not make {size} distinct tokens")
    return vocab


def bert_tokenizer(specials: dict[int, str] = TINY_BERT_SPECIALS, size: int | None = None,
                   **kwargs: Any) -> tf.BertTokenizer:
    """A BERT WordPiece tokenizer (BLIP's, GIT's) over `WORDS`."""
    return tf.BertTokenizer(vocab=vocab_layout(WORDS, specials, size), **kwargs)


def bpe_tokenizer(cls: type[tf.PreTrainedTokenizerBase], clip: bool, specials: dict[int, str],
                  size: int | None = None, **kwargs: Any) -> tf.PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer ``cls`` (CLIPTokenizer with ``clip``, else GPT-2's or OPT's) over `WORDS`;
    fillers are plain words, so that they decode to text."""
    vocab, merges = bpe_vocab(WORDS, clip)
    filler = "tok{}</w>" if clip else "Ġtok{}"
    return cls(vocab=vocab_layout(vocab, specials, size, filler), merges=merges, **kwargs)


def unigram_tokenizer(specials: dict[int, str], size: int, **kwargs: Any) -> tf.T5Tokenizer:
    """A T5 (SentencePiece unigram) tokenizer over `WORDS`."""
    vocab = vocab_layout(["▁", *("▁" + w for w in WORDS)], specials, size, "▁tok{}")
    return tf.T5Tokenizer(vocab=[(t, 0.0) for t in vocab], **kwargs)
