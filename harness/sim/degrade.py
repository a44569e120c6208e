"""TEST-ONLY degradations of the simulated engine (``--degrade NAME[,NAME]``, hidden from --help).

Each reproduces an engine that breaks what the gate's cache expectations rest on, so the gate can be shown to
reject it (``benchmarks/degradation_matrix.py``); none belongs in front of users.

- ``no_prefix_cache``: nothing is ever served from the cache (prefix caching off).
- ``misreport_cached``: responses report every full block of the prompt as cached, whatever was hit; the
  ``/metrics`` counters keep counting the real hits.
- ``size_only_hash``: an image is keyed by its size only, so every same-size image hits the others' blocks
  (answers still describe the real image: only the cache is wrong).
- ``no_last_token_rule``: the reported cached tokens include the block holding the last prompt token when it
  is cached (vLLM always recomputes that token: ``max_cache_hit_length = request.num_tokens - 1`` in
  ``vllm/v1/core/kv_cache_manager.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

from harness import degrade as shared
from harness.mm.prompt import ImagePart
from harness.mm.resolver import ResolvedImage

if TYPE_CHECKING:
    from harness.sim.engine import Request
    from harness.sim.service import SimWorker

MODES = ("no_prefix_cache", "misreport_cached", "size_only_hash", "no_last_token_rule")


def parse_modes(text: str | Iterable[str] | None) -> frozenset[str]:
    """``--degrade`` values -> the engine's mode names (``harness.degrade.parse_modes``)."""
    return shared.parse_modes(text, MODES)


def install(worker: SimWorker, modes: frozenset[str]) -> None:
    """Apply ``modes`` to a constructed worker (the one hook in ``SimWorker.__init__``)."""
    if not modes:
        return
    pool, block = worker.pool, worker.cfg.block_size
    if "no_prefix_cache" in modes:
        pool.longest_cached_prefix = lambda block_hashes, max_blocks: []  # type: ignore[method-assign,assignment]
    if "size_only_hash" in modes:
        resolve = worker.images.resolve

        async def by_size(part: ImagePart) -> ResolvedImage:
            resolved = await resolve(part)
            facts = resolved.facts
            return dataclasses.replace(resolved, hash=part.uuid or f"size:{facts.width}x{facts.height}")

        worker.images.resolve = by_size  # type: ignore[method-assign]
    if "misreport_cached" in modes:
        finished = worker.metrics.on_finished

        def report(req: Request, now: float) -> None:
            finished(req, now)  # the counters see the real hits first
            req.num_cached_tokens = req.prompt_len // block * block

        worker.metrics.on_finished = report  # type: ignore[method-assign]
    if "no_last_token_rule" in modes:
        scheduled = worker.metrics.on_scheduled

        def uncapped(req: Request) -> None:
            scheduled(req)  # at first scheduling: the request's own blocks are not cached yet
            hit = len(pool.longest_cached_prefix(req.block_hashes, len(req.block_hashes)))
            req.num_cached_tokens = max(req.num_cached_tokens, hit * block)

        worker.metrics.on_scheduled = uncapped  # type: ignore[method-assign]
