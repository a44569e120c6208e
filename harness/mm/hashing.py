"""Prefix-cache block hashes, after vLLM's ``kv_cache_utils.hash_block_tokens``.

Each full block hashes (parent hash, its token ids, extra keys). Extra keys carry what token ids cannot:
the LoRA adapter (name and path) on every block, ``("mm", image hash, offset of the image relative to the
block start)`` for every image whose placeholder run overlaps the block, and the cache salt on the first
block. Two prompts with identical placeholder tokens but different images therefore diverge at the first block
that covers an image.

The hash is blake2b truncated to 64 bits over a canonical byte encoding, so every process (engine, proxy,
event consumer) computes the same value without a pinned PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
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
    #: The adapter's path as the worker loaded it: a changed adapter under the same name must not hit old blocks.
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
    keys: list[object] = []
    if ctx.lora_name:
        keys.append(("lora", ctx.lora_name, ctx.lora_path))
    for item in mm_items:
        if item.offset < end and item.offset + item.length > start:
            keys.append(("mm", item.hash, item.offset - start))
    if start == 0 and ctx.cache_salt:
        keys.append(("cache_salt", ctx.cache_salt))
    return tuple(keys) if keys else None


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
    """
    out: list[int] = []
    n_full = len(token_ids) // block_size
    # Images are sorted by offset; only those overlapping the current block are scanned.
    items = sorted(mm_items, key=lambda it: it.offset)
    first = 0
    for b in range(start_block, n_full):
        start, end = b * block_size, (b + 1) * block_size
        while first < len(items) and items[first].offset + items[first].length <= start:
            first += 1
        overlapping = [it for it in items[first:] if it.offset < end]
        extra = block_extra_keys(start, end, overlapping, ctx)
        parent = hash_block(parent, token_ids[start:end], extra)
        out.append(parent)
        if extras_out is not None:
            extras_out.append(extra)
    return out
