"""Prefix-cache block hashes: full blocks only, chaining, and the extra keys (image, LoRA, cache salt)."""

from __future__ import annotations

import hashlib
import random
from array import array
from collections.abc import Sequence

import pytest

from harness.mm.families import get_family
from harness.mm.hashing import (
    DEFAULT_BLOCK_SIZE,
    NONE_HASH,
    BlockKeyContext,
    block_extra_keys,
    block_hashes,
    hash_block,
)
from harness.mm.prompt import MMItem, parse_chat, render_chat
from harness.mm.tokenizer import SPECIAL_IDS

B = DEFAULT_BLOCK_SIZE
PAD = SPECIAL_IDS["<|image_pad|>"]


def tokens(n: int, start: int = 300) -> list[int]:
    return list(range(start, start + n))


def with_image(n: int, offset: int, length: int) -> list[int]:
    """``n`` text tokens with a run of pad tokens at [offset, offset + length)."""
    ids = tokens(n)
    ids[offset : offset + length] = [PAD] * length
    return ids


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return i
    return None


def naive_block_hashes(
    ids: Sequence[int], block_size: int, items: Sequence[MMItem], lora: str | None, salt: str | None
) -> list[int]:
    """The key layout from REFERENCE.md, computed with a plain scan over every image for every block."""
    out: list[int] = []
    parent = NONE_HASH
    for b in range(len(ids) // block_size):
        start, end = b * block_size, (b + 1) * block_size
        keys: list[object] = []
        if lora:
            keys.append(("lora", lora))
        for it in sorted(items, key=lambda i: i.offset):
            if it.offset < end and start < it.offset + it.length:
                keys.append(("mm", it.hash, it.offset - start))
        if b == 0 and salt:
            keys.append(("cache_salt", salt))
        parent = hash_block(parent, ids[start:end], tuple(keys) or None)
        out.append(parent)
    return out


# ---------------------------------------------------------------------------------------------- basics


def test_hash_block_is_blake2b_64_over_parent_and_u32_tokens() -> None:
    toks = tokens(B)
    expected = hashlib.blake2b(NONE_HASH.to_bytes(8, "big"), digest_size=8)
    expected.update(array("I", toks).tobytes())
    assert hash_block(NONE_HASH, toks, None) == int.from_bytes(expected.digest(), "big")
    assert 0 <= hash_block(NONE_HASH, toks, None) < 1 << 64


def test_hash_block_inputs_all_matter() -> None:
    toks = tokens(B)
    base = hash_block(NONE_HASH, toks, None)
    assert hash_block(NONE_HASH + 1, toks, None) != base
    assert hash_block(NONE_HASH, [*toks[:-1], toks[-1] + 1], None) != base
    assert hash_block(NONE_HASH, toks, (("lora", "x"),)) != base
    assert hash_block(NONE_HASH, toks, ()) == base  # no extra keys == empty extra keys


def test_same_tokens_same_hashes() -> None:
    ids = tokens(100)
    assert block_hashes(ids) == block_hashes(list(ids))
    assert len(set(block_hashes(ids))) == 6


@pytest.mark.parametrize(("n", "full"), [(0, 0), (15, 0), (16, 1), (47, 2), (48, 3), (49, 3)])
def test_only_full_blocks_hashed(n: int, full: int) -> None:
    assert len(block_hashes(tokens(n))) == full


def test_partial_tail_does_not_affect_full_blocks() -> None:
    a = block_hashes(tokens(40))
    b = block_hashes([*tokens(32), 1, 2, 3, 4, 5, 6, 7, 8])
    assert a == b


def test_prefix_property() -> None:
    """The hashes of a prompt's prefix are a prefix of its hashes (what prefix caching relies on)."""
    ids = tokens(160)
    full = block_hashes(ids)
    for n in (16, 50, 64, 159):
        assert block_hashes(ids[:n]) == full[: n // B]


def test_block_size_parameter() -> None:
    ids = tokens(20)
    assert len(block_hashes(ids, block_size=4)) == 5
    assert block_hashes(ids, block_size=4)[0] == hash_block(NONE_HASH, ids[:4], None)
    assert block_hashes(ids, block_size=4)[0] != block_hashes(ids, block_size=16)[0]


def test_changing_one_token_diverges_at_its_block() -> None:
    ids = tokens(96)
    changed = list(ids)
    changed[50] += 1  # block 3 = [48, 64)
    a, b = block_hashes(ids), block_hashes(changed)
    assert first_divergence(a, b) == 3
    assert all(x != y for x, y in zip(a[3:], b[3:], strict=True))  # the chain carries the change


# ------------------------------------------------------------------------------------------ image keys


def test_different_image_same_tokens_diverge_at_first_overlapping_block() -> None:
    # Image run [37, 67): overlaps blocks 2 [32,48), 3 [48,64), 4 [64,80). Block 5 [80,96) does not.
    ids = with_image(96, 37, 30)
    a = block_hashes(ids, mm_items=[MMItem("image-a", 37, 30)])
    b = block_hashes(ids, mm_items=[MMItem("image-b", 37, 30)])
    assert a[:2] == b[:2]  # nothing before the image changes
    assert first_divergence(a, b) == 2
    assert all(x != y for x, y in zip(a[2:], b[2:], strict=True))
    # The blocks before the image equal those of a prompt without any image keys.
    assert a[:2] == block_hashes(ids)[:2]


def test_image_starting_on_block_boundary() -> None:
    ids = with_image(64, 32, 16)  # exactly block 2
    a = block_hashes(ids, mm_items=[MMItem("a", 32, 16)])
    b = block_hashes(ids, mm_items=[MMItem("b", 32, 16)])
    assert first_divergence(a, b) == 2


def test_image_ending_on_block_boundary_does_not_touch_next_block() -> None:
    # Run [20, 32): the half-open range ends where block 2 starts, so block 2's keys have no image.
    assert block_extra_keys(32, 48, [MMItem("a", 20, 12)], BlockKeyContext()) is None
    assert block_extra_keys(16, 32, [MMItem("a", 20, 12)], BlockKeyContext()) == (("mm", "a", 4),)


def test_mm_key_offset_relative_to_block_start() -> None:
    item = MMItem("h", 37, 30)
    ctx = BlockKeyContext()
    assert block_extra_keys(0, 16, [item], ctx) is None
    assert block_extra_keys(32, 48, [item], ctx) == (("mm", "h", 5),)
    assert block_extra_keys(48, 64, [item], ctx) == (("mm", "h", -11),)
    assert block_extra_keys(64, 80, [item], ctx) == (("mm", "h", -27),)
    assert block_extra_keys(80, 96, [item], ctx) is None


def test_same_image_different_offset_in_block_changes_hash() -> None:
    """All-pad token ids: only the ("mm", hash, offset - block_start) key tells the two layouts apart."""
    ids = [PAD] * 64
    a = block_hashes(ids, mm_items=[MMItem("h", 20, 10)])
    b = block_hashes(ids, mm_items=[MMItem("h", 21, 10)])
    assert a[0] == b[0]  # block 0 overlaps neither
    assert a[1] != b[1]
    # Directly on one block: same parent, same tokens, same image, relative offset 4 vs 5.
    blk = [PAD] * B
    assert hash_block(NONE_HASH, blk, (("mm", "h", 4),)) != hash_block(NONE_HASH, blk, (("mm", "h", 5),))
    assert hash_block(NONE_HASH, blk, (("mm", "h", 4),)) == hash_block(NONE_HASH, blk, (("mm", "h", 4),))


def test_two_images_in_one_block() -> None:
    items = [MMItem("x", 2, 3), MMItem("y", 9, 10)]
    assert block_extra_keys(0, 16, items, BlockKeyContext()) == (("mm", "x", 2), ("mm", "y", 9))
    assert block_extra_keys(16, 32, items, BlockKeyContext()) == (("mm", "y", -7),)


def test_image_order_given_does_not_matter() -> None:
    ids = tokens(128)
    items = [MMItem("a", 5, 20), MMItem("b", 40, 50), MMItem("c", 100, 3)]
    assert block_hashes(ids, mm_items=items) == block_hashes(ids, mm_items=list(reversed(items)))


def test_matches_naive_reference_on_random_layouts() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        block_size = rng.choice([4, 16, 32])
        n = rng.randrange(0, 300)
        items = []
        pos = rng.randrange(0, 20)
        while pos < n:
            length = rng.randrange(1, 60)
            items.append(MMItem(f"img{len(items)}", pos, length))
            pos += length + rng.randrange(0, 40)
        lora = rng.choice([None, "adapter-1"])
        salt = rng.choice([None, "salt-1"])
        ids = [rng.randrange(256, 100000) for _ in range(n)]
        ctx = BlockKeyContext(lora_name=lora, cache_salt=salt)
        got = block_hashes(ids, block_size, items, ctx)
        assert got == naive_block_hashes(ids, block_size, items, lora, salt)


def test_rendered_prompt_images_diverge_where_expected() -> None:
    """End to end with the renderer: same text and image size, different image content."""
    family = get_family("qwen2_5_vl")
    turns = parse_chat(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "word " * 40}, {"type": "image_url", "image_url": {"url": "x"}}],
            }
        ]
    )
    a = render_chat(turns, family, [("cat", 64)])
    b = render_chat(turns, family, [("dog", 64)])
    assert a.token_ids == b.token_ids
    ha = block_hashes(a.token_ids, mm_items=a.mm_items)
    hb = block_hashes(b.token_ids, mm_items=b.mm_items)
    assert first_divergence(ha, hb) == a.mm_items[0].offset // B


# ------------------------------------------------------------------------------------- LoRA and salt


def test_lora_key_on_every_block() -> None:
    ids = tokens(64)
    plain = block_hashes(ids)
    lora = block_hashes(ids, ctx=BlockKeyContext(lora_name="sql-adapter"))
    other = block_hashes(ids, ctx=BlockKeyContext(lora_name="other-adapter"))
    assert all(x != y for x, y in zip(plain, lora, strict=True))
    assert all(x != y for x, y in zip(lora, other, strict=True))
    for b in range(1, 4):  # the key itself is on later blocks, not only inherited through the chain
        assert lora[b] != hash_block(lora[b - 1], ids[b * B : (b + 1) * B], None)
        assert lora[b] == hash_block(lora[b - 1], ids[b * B : (b + 1) * B], (("lora", "sql-adapter"),))


def test_cache_salt_only_on_first_block_but_chain_propagates() -> None:
    ids = tokens(64)
    plain = block_hashes(ids)
    salted = block_hashes(ids, ctx=BlockKeyContext(cache_salt="tenant-1"))
    other = block_hashes(ids, ctx=BlockKeyContext(cache_salt="tenant-2"))
    assert all(x != y for x, y in zip(plain, salted, strict=True))
    assert all(x != y for x, y in zip(salted, other, strict=True))
    assert block_extra_keys(0, B, [], BlockKeyContext(cache_salt="tenant-1")) == (("cache_salt", "tenant-1"),)
    assert block_extra_keys(B, 2 * B, [], BlockKeyContext(cache_salt="tenant-1")) is None
    for b in range(1, 4):  # later blocks: only the parent carries the salt
        assert salted[b] == hash_block(salted[b - 1], ids[b * B : (b + 1) * B], None)


def test_key_order_lora_mm_salt() -> None:
    ctx = BlockKeyContext(lora_name="L", cache_salt="S")
    assert block_extra_keys(0, 16, [MMItem("h", 3, 4)], ctx) == (
        ("lora", "L"),
        ("mm", "h", 3),
        ("cache_salt", "S"),
    )


def test_empty_lora_and_salt_are_no_keys() -> None:
    ids = tokens(32)
    assert block_hashes(ids, ctx=BlockKeyContext(lora_name="", cache_salt="")) == block_hashes(ids)


# ---------------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "ctx", [BlockKeyContext(), BlockKeyContext(lora_name="L"), BlockKeyContext(lora_name="L", cache_salt="S")]
)
def test_resume_equals_full_computation(ctx: BlockKeyContext) -> None:
    ids = with_image(150, 20, 70)
    items = [MMItem("img", 20, 70), MMItem("img2", 120, 5)]
    full = block_hashes(ids, mm_items=items, ctx=ctx)
    assert len(full) == 9
    for k in range(1, len(full) + 1):
        resumed = block_hashes(ids, mm_items=items, ctx=ctx, start_block=k, parent=full[k - 1])
        assert resumed == full[k:]
    assert block_hashes(ids, mm_items=items, ctx=ctx, start_block=0) == full


def test_resume_after_decode_growth() -> None:
    """Decode appends tokens; hashing only the new full blocks continues the chain."""
    prompt = tokens(40)
    full_prompt = block_hashes(prompt)
    grown = prompt + tokens(30, start=5000)
    new = block_hashes(grown, start_block=len(full_prompt), parent=full_prompt[-1])
    assert full_prompt + new == block_hashes(grown)


def test_resume_with_wrong_parent_differs() -> None:
    ids = tokens(64)
    full = block_hashes(ids)
    assert block_hashes(ids, start_block=2, parent=full[0]) != full[2:]


def test_lora_key_is_the_adapter_name_only() -> None:
    """vLLM keys blocks by the adapter's name (``_gen_lora_extra_hash_keys`` in ``vllm/v1/core/kv_cache_utils.py``
    returns ``[lora_request.lora_name]``): an adapter replaced under the same name hits the old blocks."""
    toks = list(range(300, 332))
    old = block_hashes(toks, 16, (), BlockKeyContext(lora_name="a", lora_path="/adapters/a@v1"))
    new = block_hashes(toks, 16, (), BlockKeyContext(lora_name="a", lora_path="/adapters/a@v2"))
    renamed = block_hashes(toks, 16, (), BlockKeyContext(lora_name="a@v2", lora_path="/adapters/a@v2"))
    assert old == new
    assert renamed[0] != old[0] and renamed[1] != old[1]


# --------------------------------------------------------------------------------- image index, early stop


def test_no_new_full_block_returns_at_once() -> None:
    """``request_block_hasher`` returns early when no new full block exists (``vllm/v1/core/kv_cache_utils.py``)."""
    ids = tokens(47)
    full = block_hashes(ids)
    assert len(full) == 2
    assert block_hashes(ids, start_block=2, parent=full[-1]) == []
    assert block_hashes(ids, start_block=5, parent=full[-1]) == []


class CountingItems(list[MMItem]):
    """Counts element reads, to show the image walk does not rescan every image for every block."""

    reads = 0

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        CountingItems.reads += 1
        return super().__getitem__(i)


def test_image_walk_is_linear_and_resumes_at_the_right_image() -> None:
    """vLLM walks images with a running ``start_mm_idx`` (``_gen_mm_extra_hash_keys``): each image is visited by
    the blocks it overlaps, not by every block."""
    n_img = 200
    ids = tokens(n_img * 20)
    items = CountingItems(MMItem(f"i{k}", k * 20 + 2, 10) for k in range(n_img))
    CountingItems.reads = 0
    got = block_hashes(ids, 16, items)
    assert got == naive_block_hashes(ids, 16, list(items), None, None)
    assert CountingItems.reads < 4 * (len(ids) // 16 + n_img)  # a rescan would read ~blocks x images = 50,000
    k = 100
    assert block_hashes(ids, 16, items, start_block=k, parent=got[k - 1]) == got[k:]
