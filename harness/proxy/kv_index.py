"""Per-worker indexes of which prefix blocks a worker is believed to hold.

``PredictedIndex`` learns only from the proxy's own decisions: routing a request to a worker predicts that the
worker will cache the request's blocks, for at most ``ttl_s`` and ``capacity`` blocks (LRU), since the worker
evicts on its own schedule. A decision first *reserves* its blocks (so concurrent requests with the same prefix
see each other while in flight) and *settles* them when the worker answered: committed into the LRU on success,
dropped on a rejection, so requests the worker refuses (400 over-length) never evict real entries.
``EventIndex`` is exact: it mirrors the worker's BlockStored / BlockRemoved / AllBlocksCleared events. A worker
with events uses both, so blocks of requests still in flight (not yet announced by events) count too; a removal
or a clear then also drops the committed predictions of those blocks (``WorkerState.apply_events``), or the
prediction would keep claiming them for its TTL after the worker said they are gone.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, KeysView, Sequence

from harness.server.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


class PredictedIndex:
    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.clock = clock
        self._expiry: OrderedDict[int, float] = OrderedDict()
        #: Blocks of requests in flight, with how many requests hold each; never evicted, never expire.
        self._pending: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._expiry)

    def insert(self, hashes: Iterable[int]) -> None:
        expiry = self.clock() + self.ttl_s
        entries = self._expiry
        # Last block first, so a request's leading blocks end up most recent and are evicted last: a prefix
        # index is useless without the head of the prefix (vLLM frees a request's blocks in reverse for the
        # same reason), and a prefix shared by many requests stays in.
        for h in reversed(list(hashes)):
            entries[h] = expiry
            entries.move_to_end(h)
        while len(entries) > self.capacity:
            entries.popitem(last=False)

    def match(self, hashes: Sequence[int]) -> int:
        """Number of leading ``hashes`` present and unexpired."""
        now = self.clock()
        entries, pending = self._expiry, self._pending
        n = 0
        for h in hashes:
            expiry = entries.get(h)
            if (expiry is None or expiry < now) and h not in pending:
                break
            n += 1
        return n

    def reserve(self, hashes: Sequence[int]) -> None:
        """Count ``hashes`` as (about to be) cached while their request is in flight."""
        pending = self._pending
        for h in hashes:
            pending[h] = pending.get(h, 0) + 1

    def settle(self, hashes: Sequence[int], *, commit: bool) -> None:
        """End a reservation: ``commit`` (the worker took the request) inserts the blocks, else they go."""
        pending = self._pending
        for h in hashes:
            left = pending.get(h, 0) - 1
            if left > 0:
                pending[h] = left
            else:
                pending.pop(h, None)
        if commit:
            self.insert(hashes)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        """Forget what the worker cached (it restarted, or its events say it cleared its cache); reservations of
        requests in flight stay theirs."""
        self._expiry.clear()

    def discard(self, hashes: Iterable[int]) -> None:
        """Forget committed predictions of ``hashes`` (the worker's events say it evicted them); reservations of
        requests in flight stay."""
        entries = self._expiry
        for h in hashes:
            entries.pop(h, None)


class EventIndex:
    """Counts per hash: vLLM 0.33 does not de-duplicate stores (two physical blocks may hold one hash and each is
    stored and later removed on its own, ``BlockPool`` in ``vllm/v1/core/block_pool.py``), so a hash stays cached
    until as many BlockRemoved as BlockStored have named it."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.events = 0

    @property
    def blocks(self) -> KeysView[int]:
        return self.counts.keys()

    def apply(self, events: Iterable[KVEvent]) -> None:
        counts = self.counts
        for event in events:
            self.events += 1
            if isinstance(event, BlockStored):
                for h in event.block_hashes:
                    counts[h] = counts.get(h, 0) + 1
            elif isinstance(event, BlockRemoved):
                for h in event.block_hashes:
                    left = counts.get(h, 0) - 1
                    if left > 0:
                        counts[h] = left
                    else:
                        counts.pop(h, None)
            elif isinstance(event, AllBlocksCleared):
                counts.clear()

    def match(self, hashes: Sequence[int]) -> int:
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n
