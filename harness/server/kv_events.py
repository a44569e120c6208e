"""KV-cache events on the wire, shaped after vLLM's (``vllm/distributed/kv_events.py``).

A publisher sends ZMQ PUB multipart messages ``(topic, seq as u64 big-endian, msgpack EventBatch)``; an
EventBatch is ``[ts, [event, ...], data_parallel_rank]`` and each event an array whose first element is its tag
(msgspec's ``array_like`` + ``tag`` encoding, which is what vLLM emits):

- ``["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
  extra_keys]``, with one entry of extra keys (LoRA, ``("mm", image hash, offset)``, cache salt) per block;
- ``["BlockRemoved", block_hashes, medium]``;
- ``["AllBlocksCleared"]``.

The simulated engine publishes them with
``--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://127.0.0.1:P"}'``
and the proxy subscribes to keep an exact per-worker index. Decoding tolerates vLLM's shorter arrays.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

DEFAULT_TOPIC = b"kv-events"


@dataclass(frozen=True)
class BlockStored:
    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None = None
    #: Per block: the extra hash keys (LoRA, ("mm", image hash, offset), cache salt), or None.
    extra_keys: tuple[tuple[object, ...] | None, ...] | None = None


@dataclass(frozen=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]


@dataclass(frozen=True)
class AllBlocksCleared:
    pass


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared


def encode_event(event: KVEvent) -> list[Any]:
    if isinstance(event, BlockStored):
        extra = [list(k) if k else None for k in event.extra_keys] if event.extra_keys is not None else None
        return [
            "BlockStored",
            list(event.block_hashes),
            event.parent_block_hash,
            list(event.token_ids),
            event.block_size,
            None,  # lora_id
            "GPU",  # medium
            event.lora_name,
            extra,
        ]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", list(event.block_hashes), "GPU"]
    return ["AllBlocksCleared"]


def decode_event(raw: Sequence[Any]) -> KVEvent | None:
    """One event from its array form; unknown tags (future vLLM events) decode to None and are skipped."""
    tag = raw[0] if raw else None
    if isinstance(tag, bytes):
        tag = tag.decode()
    if tag == "BlockStored":
        lora_name = raw[7] if len(raw) > 7 else None
        extra = raw[8] if len(raw) > 8 and raw[8] is not None else None
        keys = tuple(_freeze(k) if k else None for k in extra) if extra is not None else None
        return BlockStored(tuple(raw[1]), raw[2], tuple(raw[3]), int(raw[4]), lora_name, keys)
    if tag == "BlockRemoved":
        return BlockRemoved(tuple(raw[1]))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def encode_batch(events: Sequence[KVEvent], ts: float | None = None, dp_rank: int = 0) -> bytes:
    return msgpack.packb([ts if ts is not None else time.time(), [encode_event(e) for e in events], dp_rank])


def decode_batch(payload: bytes) -> tuple[float, list[KVEvent]]:
    ts, events, *_ = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    return float(ts), [e for e in (decode_event(r) for r in events) if e is not None]


@dataclass(frozen=True)
class KVEventsConfig:
    endpoint: str
    topic: bytes = DEFAULT_TOPIC

    @classmethod
    def from_json(cls, cfg: dict[str, Any]) -> KVEventsConfig | None:
        """vLLM's ``--kv-events-config`` object; None when events are disabled."""
        if not cfg.get("enable_kv_cache_events", False):
            return None
        publisher = cfg.get("publisher", "zmq")
        if publisher != "zmq":
            raise ValueError(f"kv events publisher {publisher!r} is not supported (use 'zmq')")
        endpoint = str(cfg.get("endpoint", "tcp://127.0.0.1:5557")).replace("tcp://*:", "tcp://127.0.0.1:")
        return cls(endpoint=endpoint, topic=str(cfg.get("topic", "kv-events")).encode())


class EventPublisher:
    """Batches events produced during one engine step and sends them as one message (non-blocking)."""

    def __init__(self, cfg: KVEventsConfig) -> None:
        self.cfg = cfg
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(cfg.endpoint)
        self._pending: list[KVEvent] = []
        self.seq = 0

    def add(self, event: KVEvent) -> None:
        self._pending.append(event)

    def flush(self) -> None:
        if not self._pending:
            return
        payload = encode_batch(self._pending)
        self._pending = []
        try:
            self._sock.send_multipart([self.cfg.topic, self.seq.to_bytes(8, "big"), payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            log.warning("kv events: subscriber queue full, dropped batch %d", self.seq)
        self.seq += 1

    def close(self) -> None:
        self._sock.close(0)


class EventSubscriber:
    """Async SUB socket; ``recv`` yields (seq, events) and reports sequence gaps to the caller."""

    def __init__(self, endpoint: str, topic: bytes = DEFAULT_TOPIC) -> None:
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._sock.connect(endpoint)
        self.endpoint = endpoint

    async def recv(self) -> tuple[int, list[KVEvent]]:
        _topic, seq, payload = await self._sock.recv_multipart()
        return int.from_bytes(seq, "big"), decode_batch(payload)[1]

    def close(self) -> None:
        self._sock.close(0)
