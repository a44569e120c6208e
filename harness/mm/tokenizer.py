"""A deterministic, reversible, dependency-free tokenizer.

Real tokenizers need a model download; the harness only needs counts that are exact, stable across processes
and cheap to compute, and ids that decode back to the text. Text is split GPT-2 style into words, numbers,
punctuation runs and whitespace, and each piece is cut into chunks of at most three UTF-8 bytes; a chunk's id
is its bytes read as an integer, offset past the special tokens. That gives about one token per three
characters of English, ids below 2**26 (they fit every u32 a router may parse them into), and a decode that
needs no vocabulary file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

#: Special tokens, in id order. The chat template and every family's image placeholders use these.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<image>",
    "<|image|>",
)
SPECIAL_IDS: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
NUM_RESERVED = 256  # ids below this are special (room to grow without changing text ids)
EOS_TOKEN_ID = SPECIAL_IDS["<|im_end|>"]
MAX_CHUNK_BYTES = 3
_LEN_STRIDE = 1 << (8 * MAX_CHUNK_BYTES)
VOCAB_SIZE = NUM_RESERVED + MAX_CHUNK_BYTES * _LEN_STRIDE

_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
_PIECE_RE = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+|_+")


@lru_cache(maxsize=65536)
def _encode_piece(piece: str) -> tuple[int, ...]:
    raw = piece.encode("utf-8")
    ids = []
    for start in range(0, len(raw), MAX_CHUNK_BYTES):
        chunk = raw[start : start + MAX_CHUNK_BYTES]
        ids.append(NUM_RESERVED + (len(chunk) - 1) * _LEN_STRIDE + int.from_bytes(chunk, "big"))
    return tuple(ids)


@lru_cache(maxsize=4096)
def _encode_cached(text: str) -> tuple[int, ...]:
    return tuple(_encode_uncached(text))


def _encode_uncached(text: str) -> list[int]:
    ids: list[int] = []
    for i, part in enumerate(_SPECIAL_RE.split(text)):
        if not part:
            continue
        if i % 2:  # odd indices of a capturing split are the separators: special tokens
            ids.append(SPECIAL_IDS[part])
            continue
        for piece in _PIECE_RE.findall(part):
            ids.extend(_encode_piece(piece))
    return ids


def encode(text: str) -> list[int]:
    """Token ids of ``text``; special tokens written literally are recognised.

    Short strings (template fragments, system prompts, repeated questions) are memoized whole.
    """
    if len(text) <= 256:
        return list(_encode_cached(text))
    return _encode_uncached(text)


def count(text: str) -> int:
    return len(encode(text))


def decode_bytes(ids: Iterable[int]) -> bytes:
    out = bytearray()
    for tid in ids:
        if tid < NUM_RESERVED:
            if tid >= len(SPECIAL_TOKENS):
                raise ValueError(f"token id {tid} is not in the vocabulary")
            out += SPECIAL_TOKENS[tid].encode()
            continue
        length, value = divmod(tid - NUM_RESERVED, _LEN_STRIDE)
        if length >= MAX_CHUNK_BYTES:
            raise ValueError(f"token id {tid} is not in the vocabulary")
        out += value.to_bytes(length + 1, "big")
    return bytes(out)


def decode(ids: Sequence[int] | Iterable[int]) -> str:
    """Text of ``ids``. Chunks may split a multi-byte character; a partial one decodes as U+FFFD."""
    return decode_bytes(ids).decode("utf-8", errors="replace")


def is_valid_id(tid: int) -> bool:
    if tid < 0:
        return False
    if tid < NUM_RESERVED:
        return tid < len(SPECIAL_TOKENS)
    return tid < VOCAB_SIZE
