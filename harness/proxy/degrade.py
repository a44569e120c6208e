"""TEST-ONLY degradations of the proxy's routing key and index (``--degrade NAME[,NAME]``, hidden from --help).

Each reproduces one way a real router gets multimodal routing wrong, so the gate can be shown to reject it (see
``benchmarks/degradation_matrix.py``). None of them is ever right to run in front of users.

- ``text_key``: images' placeholder runs are keyed without the image (what a text-only router does with an
  expanded prompt): different images behind the same text look identical.
- ``url_hash``: the image is keyed by its URL / reference string, not its bytes (Dynamo's default without
  frontend decoding): the same picture by URL and as base64 looks different.
- ``first_image_only``: only the first image of a request enters the key.
- ``no_offset``: the router does not know where images sit, so every image's key goes on the first block.
- ``truncated_hash``: the image hash covers only the first 32 bytes of the file (the PNG signature and header):
  every same-size PNG collides.
- ``never_forgets``: the predicted index never expires or evicts a block, and a worker's KV events (where the
  proxy consumes them) only ever add: BlockRemoved and AllBlocksCleared are ignored.
- ``no_lora``: the LoRA adapter is left out of the key.
- ``geometry``: the router ignores ``--mm-processor-kwargs`` and counts image tokens at the family's defaults
  (workers started with other processor settings expand images differently: Dynamo PR #9441's bug class).
- ``block_size``: the router hashes blocks twice the size it is told the workers use.

``kv_text`` (the policy) is ``kv_mm`` routing with ``text_key``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import blake3

from harness import degrade as shared
from harness.mm import resolver as resolver_module
from harness.mm.hashing import block_hashes
from harness.mm.prompt import ImagePart, MMItem
from harness.mm.request import render_request
from harness.mm.resolver import ResolvedImage
from harness.server.kv_events import BlockStored, KVEvent

if TYPE_CHECKING:
    from harness.proxy.adapters import AdapterInfo
    from harness.proxy.service import Proxy, RoutingKey
    from harness.proxy.workers import WorkerState

MODES = (
    "text_key",
    "url_hash",
    "first_image_only",
    "no_offset",
    "truncated_hash",
    "never_forgets",
    "no_lora",
    "geometry",
    "block_size",
)
#: What an image is keyed by when its content is left out: a constant, so every image looks alike.
ANY_IMAGE = "text-only"


def parse_modes(text: str | Iterable[str] | None) -> frozenset[str]:
    """``--degrade`` values -> the proxy's mode names (``harness.degrade.parse_modes``)."""
    return shared.parse_modes(text, MODES)


def degrade_items(items: list[MMItem], modes: frozenset[str]) -> list[MMItem]:
    """The image items the key is hashed with, as the degraded router sees them (placeholder runs kept)."""
    if "text_key" in modes:
        return [dataclasses.replace(it, hash=ANY_IMAGE) for it in items]
    if "first_image_only" in modes:
        items = [it if i == 0 else dataclasses.replace(it, hash=ANY_IMAGE) for i, it in enumerate(items)]
    if "no_offset" in modes and items:
        return [MMItem("|".join(it.hash for it in items), 0, 1)]
    return items


def install(proxy: Proxy, modes: frozenset[str]) -> None:
    """Apply ``modes`` to a constructed proxy (the one hook in ``Proxy.__init__``)."""
    if proxy.cfg.policy == "kv_text":
        modes = modes | {"text_key"}
    proxy.degrade = modes  # type: ignore[attr-defined]
    if not modes:
        return
    cfg = proxy.cfg
    if "block_size" in modes:
        cfg.block_size *= 2
    if "geometry" in modes:
        cfg.mm = dataclasses.replace(cfg.mm, mm_processor_kwargs={}, preprocessor_config=None)
    if proxy.geometry is None or "geometry" in modes:  # kv_text: placeholders are kept, so it needs the geometry
        proxy.geometry = cfg.mm.geometry(cfg.model)
        proxy.family = proxy.geometry.family
        proxy.images = cfg.mm.resolver(cfg.model, proxy.geometry, assets=proxy.assets)
    if "truncated_hash" in modes:
        original = resolver_module.mm_hash

        def truncated(model: str, data: bytes, uuid: str | None = None) -> str:
            return original(model, data[:32], uuid)

        resolver_module.mm_hash = truncated  # this process is the proxy: nothing else hashes images here
    if "url_hash" in modes:
        images = proxy.images
        assert images is not None
        resolve = images.resolve

        async def by_url(part: ImagePart) -> ResolvedImage:
            resolved = await resolve(part)
            return dataclasses.replace(resolved, hash=part.uuid or blake3.blake3(part.url.encode()).hexdigest())

        images.resolve = by_url  # type: ignore[method-assign]
    if "never_forgets" in modes:
        for w in proxy.workers:
            w.predicted.capacity = math.inf  # type: ignore[assignment]
            w.predicted.ttl_s = math.inf
            if w.events is not None:
                w.apply_events = _stores_only(w)  # type: ignore[method-assign,assignment]
    proxy.routing_key = lambda body, chat, adapter: routing_key(proxy, body, chat, adapter)  # type: ignore[method-assign]


def _stores_only(w: WorkerState) -> Callable[[Sequence[KVEvent]], None]:
    """``WorkerState.apply_events`` that hears BlockStored only: evictions and clears are never forgotten."""
    events = w.events
    assert events is not None

    def apply(batch: Sequence[KVEvent]) -> None:
        events.apply([e for e in batch if isinstance(e, BlockStored)])

    return apply


async def routing_key(proxy: Proxy, body: dict[str, Any], chat: bool, adapter: AdapterInfo | None) -> RoutingKey:
    """``Proxy.routing_key`` with the degradations applied to what is hashed."""
    from harness.proxy.service import RoutingKey

    modes: frozenset[str] = proxy.degrade  # type: ignore[attr-defined]
    rendered = await render_request(
        body,
        chat=chat,
        family=proxy.family,
        resolver=proxy.images,
        image_limit=proxy.cfg.mm.image_limit,
        max_prompt_chars=getattr(proxy.cfg.mm, "max_prompt_chars", None),
        tokenizer=getattr(proxy, "tokenizer", None),
    )
    lora = None if "no_lora" in modes or adapter is None else adapter.served_name
    ctx = rendered.key_context(lora)
    prompt = rendered.prompt
    items = degrade_items(list(prompt.mm_items), modes)
    hashes = block_hashes(prompt.token_ids, proxy.cfg.block_size, items, ctx)
    return RoutingKey(hashes, prompt.num_tokens)
