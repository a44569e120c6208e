"""The deterministic byte-chunk tokenizer: exact ids, round trips, special tokens, vocabulary bounds."""

from __future__ import annotations

import pytest

from harness.mm import tokenizer
from harness.mm.tokenizer import (
    EOS_TOKEN_ID,
    NUM_RESERVED,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    count,
    decode,
    decode_bytes,
    encode,
    is_valid_id,
)

STRIDE = 1 << 24  # 3-byte chunks: a chunk of n bytes has id NUM_RESERVED + (n - 1) * 2**24 + int(bytes)


def chunk_id(raw: bytes) -> int:
    """The id the module's docstring promises for one chunk, computed independently."""
    assert 1 <= len(raw) <= 3
    return NUM_RESERVED + (len(raw) - 1) * STRIDE + int.from_bytes(raw, "big")


def test_special_ids_are_dense_and_in_order() -> None:
    assert [SPECIAL_IDS[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert SPECIAL_IDS["<|im_end|>"] == EOS_TOKEN_ID


def test_single_letter_id() -> None:
    assert encode("a") == [NUM_RESERVED + ord("a")]


def test_exact_ids_for_words() -> None:
    # " hello" is one piece (leading space joins the word), cut into " he" + "llo".
    assert encode(" hello") == [chunk_id(b" he"), chunk_id(b"llo")]
    # "Hi there": pieces "Hi", " there" -> "Hi" | " th", "ere".
    assert encode("Hi there") == [chunk_id(b"Hi"), chunk_id(b" th"), chunk_id(b"ere")]


def test_numbers_split_into_runs_of_three_digits() -> None:
    # "12345" -> pieces "123", "45" (digits are grouped by at most three).
    assert encode("12345") == [chunk_id(b"123"), chunk_id(b"45")]


def test_special_tokens_are_single_ids_even_inside_text() -> None:
    ids = encode("ab<|im_start|>cd<|image_pad|><|image_pad|>")
    assert ids == [
        chunk_id(b"ab"),
        SPECIAL_IDS["<|im_start|>"],
        chunk_id(b"cd"),
        SPECIAL_IDS["<|image_pad|>"],
        SPECIAL_IDS["<|image_pad|>"],
    ]


def test_special_token_alone() -> None:
    for tok in SPECIAL_TOKENS:
        assert encode(tok) == [SPECIAL_IDS[tok]]


def test_empty_text() -> None:
    assert encode("") == []
    assert decode([]) == ""
    assert count("") == 0


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world! How are you?",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\n\n",
        "snake_case_identifier __dunder__",
        "numbers 3.14159 and 1,000,000",
        "unicode: héllo wörld — € 日本語 🙂",
        "<|im_start|>user\nDescribe <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n",
        "<image>\n<|image|> mixed",
    ],
)
def test_round_trip(text: str) -> None:
    ids = encode(text)
    assert decode(ids) == text
    assert decode_bytes(ids) == text.encode("utf-8")
    assert count(text) == len(ids)


def test_long_text_takes_uncached_path_with_same_result() -> None:
    unit = " The quick brown fox jumps over the lazy dog."
    long_text = unit * 20  # > 256 characters: not memoized whole
    assert len(long_text) > 256
    ids = encode(long_text)
    assert decode(ids) == long_text
    # Piece boundaries do not cross the unit boundary ("." then " The"), so the ids concatenate.
    assert ids == encode(unit) * 20


def test_encode_returns_fresh_list() -> None:
    """The memoized path must not hand out a shared mutable list."""
    first = encode("cached text")
    first.append(999)
    assert encode("cached text") == first[:-1]


def test_roughly_one_token_per_three_characters() -> None:
    text = "Please describe the picture in one short sentence and mention the colours."
    n = count(text)
    assert len(text) / 4 <= n <= len(text) / 2


def test_ids_below_two_to_the_26() -> None:
    text = "\U0010ffff" * 3 + "ÿÿÿ" + "zzz"
    ids = encode(text)
    assert max(ids) < VOCAB_SIZE <= 1 << 26
    assert all(is_valid_id(t) for t in ids)


def test_partial_multibyte_character_decodes_as_replacement() -> None:
    ids = encode("éé")  # one letter piece of 4 bytes: c3 a9 c3 | a9
    assert ids == [chunk_id(b"\xc3\xa9\xc3"), chunk_id(b"\xa9")]
    assert decode(ids[:1]) == "é\ufffd"
    assert decode(ids) == "éé"
    # "€" is not a word character: it is its own 3-byte piece, one token.
    assert encode("é€") == [chunk_id("é".encode()), chunk_id("€".encode())]


def test_is_valid_id_bounds() -> None:
    assert is_valid_id(0)
    assert is_valid_id(len(SPECIAL_TOKENS) - 1)
    assert not is_valid_id(len(SPECIAL_TOKENS))  # reserved but unassigned
    assert not is_valid_id(NUM_RESERVED - 1)
    assert is_valid_id(NUM_RESERVED)
    assert is_valid_id(VOCAB_SIZE - 1)
    assert not is_valid_id(VOCAB_SIZE)
    assert not is_valid_id(-1)


@pytest.mark.parametrize("bad", [len(SPECIAL_TOKENS), NUM_RESERVED - 1, VOCAB_SIZE, VOCAB_SIZE + 12345])
def test_decode_rejects_ids_outside_vocabulary(bad: int) -> None:
    with pytest.raises(ValueError, match="not in the vocabulary"):
        decode([bad])


def test_every_valid_id_decodes_to_its_chunk() -> None:
    for raw in (b"\x00", b"\xff", b"\x00\x00", b"\xff\xff\xff", b"abc"):
        tid = chunk_id(raw)
        assert is_valid_id(tid)
        assert decode_bytes([tid]) == raw


def test_module_constants_consistent() -> None:
    assert tokenizer.MAX_CHUNK_BYTES == 3
    assert VOCAB_SIZE == NUM_RESERVED + 3 * STRIDE
