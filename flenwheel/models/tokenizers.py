"""Tokenizers of the twins, built in memory (no hub tokenizer can be downloaded): byte-level BPE vocabularies
holding all 256 byte symbols (CLIP and Qwen are byte-level, so any text, Chinese camera commands included,
tokenizes) and a small unigram vocabulary for T5 (unknown pieces map to ``<unk>``). One copy of each, for every
family's twin."""

from __future__ import annotations

import string

from tokenizers import AddedToken
from transformers import CLIPTokenizer, Qwen2Tokenizer, T5Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

# Qwen's chat and vision markers, as Qwen2.5-VL's and Qwen3-VL's tokenizers hold them.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, as byte-level BPE uses them."""
    return list(bytes_to_unicode().values())


def clip_tokenizer() -> CLIPTokenizer:
    symbols = byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for s in symbols:
        vocab.setdefault(s, len(vocab))
        vocab.setdefault(s + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> T5Tokenizer:
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def qwen_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE over the 256 byte symbols (any text tokenizes) plus Qwen's special tokens."""
    tok = Qwen2Tokenizer(vocab={s: i for i, s in enumerate(byte_symbols())}, merges=[])
    tok.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS]}
    )
    return tok
