"""Prefix-cache block hashes, after vLLM's ``kv_cache_utils.hash_block_tokens``.

Each full block hashes (parent hash, its token ids, extra keys). Extra keys carry what token ids cannot:
the LoRA adapter's name on every block, ``("mm", image hash, offset of the image relative to the
block start)`` for every image whose placeholder run overlaps the block, and the cache salt on the first
block. Two prompts with identical placeholder tokens but different images therefore diverge at the first block
that covers an image.

The hash is blake2b truncated to 64 bits over a canonical byte encoding, so every process (engine, proxy,
event consumer) computes the same value without a pinned PYTHONHASHSEED.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from harness.mm.prompt import MMItem

DEFAULT_BLOCK_SIZE = 16
#: The parent of the first block (vLLM seeds it from a random or hashed NONE_HASH; any constant works).
NONE_HASH = int.from_bytes(hashlib.blake2b(b"mmharness-none-hash", digest_size=8).digest(), "big")


@dataclass(frozen=True)
class BlockKeyContext:
    """Request-wide parts of the key: the LoRA adapter and the cache salt."""

    lora_name: str | None = None
    #: Not part of the key: vLLM keys blocks by the adapter's *name* only (``_gen_lora_extra_hash_keys`` in
    #: ``vllm/v1/core/kv_cache_utils.py`` returns ``[lora_request.lora_name]``), so an adapter reloaded under the
    #: same name is served the blocks of the old weights (vLLM issue #42125). Kept for callers that still pass it.
    lora_path: str | None = None
    cache_salt: str | None = None


def hash_block(parent: int, tokens: Sequence[int], extra: tuple[object, ...] | None) -> int:
    h = hashlib.blake2b(parent.to_bytes(8, "big"), digest_size=8)
    h.update(array("I", tokens).tobytes())
    if extra:
        h.update(repr(extra).encode("utf-8"))
    return int.from_bytes(h.digest(), "big")


def block_extra_keys(
    start: int,
    end: int,
    mm_items: Sequence[MMItem],
    ctx: BlockKeyContext,
) -> tuple[object, ...] | None:
    """The extra keys of block [start, end), in vLLM's order: LoRA name, images overlapping it, cache salt."""
    keys: list[object] = []
    if ctx.lora_name:
        keys.append(("lora", ctx.lora_name))
    for item in mm_items:
        if item.offset < end and item.offset + item.length > start:
            keys.append(("mm", item.hash, item.offset - start))
    if start == 0 and ctx.cache_salt:
        keys.append(("cache_salt", ctx.cache_salt))
    return tuple(keys) if keys else None


def _end(item: MMItem) -> int:
    return item.offset + item.length


def block_hashes(
    token_ids: Sequence[int],
    block_size: int = DEFAULT_BLOCK_SIZE,
    mm_items: Sequence[MMItem] = (),
    ctx: BlockKeyContext = BlockKeyContext(),
    *,
    start_block: int = 0,
    parent: int = NONE_HASH,
    extras_out: list[tuple[object, ...] | None] | None = None,
) -> list[int]:
    """Chained hashes of the full blocks of ``token_ids`` from ``start_block`` on.

    ``parent`` must be the hash of block ``start_block - 1`` when resuming a chain (decode blocks). Each block's
    extra keys are appended to ``extras_out`` when given (KV events publish them).

    Like vLLM's ``request_block_hasher`` and ``_gen_mm_extra_hash_keys`` (``vllm/v1/core/kv_cache_utils.py``):
    it returns at once when no new full block exists, and walks the images with a running index that only moves
    forward, so each block looks at the images it overlaps and no others. vLLM resumes at the last image
    (``start_mm_idx = -1``, valid for decode blocks only); this resumes at the first image not wholly before the
    start block (a binary search), which is the same for decode blocks and also right inside a prompt.
    """
    n_full = len(token_ids) // block_size
    if start_block >= n_full:
        return []  # early stop: no new full block
    items: Sequence[MMItem] = mm_items
    if any(a.offset > b.offset for a, b in itertools.pairwise(items)):
        items = sorted(items, key=lambda it: it.offset)
    idx = bisect.bisect_right(items, start_block * block_size, key=_end) if start_block and items else 0
    lora_key: tuple[object, ...] = (("lora", ctx.lora_name),) if ctx.lora_name else ()
    salt = ctx.cache_salt
    num_items = len(items)
    out: list[int] = []
    for b in range(start_block, n_full):
        start, end = b * block_size, (b + 1) * block_size
        keys: list[object] = list(lora_key)
        while idx < num_items:
            item = items[idx]
            if item.offset >= end:
                break  # this block has not reached the next image
            item_end = item.offset + item.length
            if item_end <= start:
                idx += 1  # passed it
                continue
            keys.append(("mm", item.hash, item.offset - start))
            if item_end > end:
                break  # the image continues into the next block
            idx += 1  # it ends here; the block may hold the next one too
        if b == 0 and salt:
            keys.append(("cache_salt", salt))
        extra = tuple(keys) if keys else None
        parent = hash_block(parent, token_ids[start:end], extra)
        out.append(parent)
        if extras_out is not None:
            extras_out.append(extra)
    return out
