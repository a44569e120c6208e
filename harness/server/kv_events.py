"""KV-cache events on the wire, shaped after vLLM's (``vllm/distributed/kv_events.py``).

A publisher sends ZMQ PUB multipart messages ``(topic, seq as u64 big-endian, msgpack EventBatch)``; an
EventBatch is ``[ts, [event, ...], data_parallel_rank]``. Each event is a msgspec tagged struct, and vLLM changed
how those are encoded (PR #42892, June 2026, in releases from 0.24 on):

- **0.33 (what the simulated engine publishes)**: a map with the tag under ``"type"`` and named fields, defaults
  omitted: ``{"type": "BlockStored", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
  "medium", "lora_name", "extra_keys", "group_idx", "kv_cache_spec_kind"}``, ``{"type": "BlockRemoved",
  "block_hashes", "medium", "group_idx"}``, ``{"type": "AllBlocksCleared"}``;
- **older releases**: ``array_like`` positional arrays, tag first: ``["BlockStored", block_hashes,
  parent_block_hash, token_ids, block_size, lora_id, medium, lora_name, extra_keys]`` (shorter in older
  releases still), ``["BlockRemoved", block_hashes, medium]``, ``["AllBlocksCleared"]``.

The decoder reads both, a batch given as a map too, and block hashes as integers (vLLM's default,
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``) or as digest bytes (folded to their low 64 bits, as
``maybe_convert_block_hash`` in ``vllm/v1/core/kv_cache_utils.py`` does). vLLM's default topic is empty
(``KVEventsConfig.topic`` in ``vllm/config/kv_events.py``); a subscriber with an empty topic receives every topic.
Extra keys carry, per block, the LoRA name, ``("mm", image hash, offset)`` and the cache salt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack  # type: ignore[import-untyped]
import zmq
import zmq.asyncio

log = logging.getLogger(__name__)

#: vLLM's default topic (``KVEventsConfig.topic``): empty, which a SUB socket reads as "every topic".
DEFAULT_TOPIC = b""
EventForm = Literal["map", "array"]
_U64 = (1 << 64) - 1


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


def encode_event(event: KVEvent, form: EventForm = "map") -> list[Any] | dict[str, Any]:
    """One event as vLLM 0.33 encodes it (``form="map"``), or in the positional form of older releases."""
    if isinstance(event, BlockStored):
        extra = [list(k) if k else None for k in event.extra_keys] if event.extra_keys is not None else None
        if form == "array":
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
        stored: dict[str, Any] = {
            "type": "BlockStored",
            "block_hashes": list(event.block_hashes),
            "parent_block_hash": event.parent_block_hash,
            "token_ids": list(event.token_ids),
            "block_size": event.block_size,
            "lora_id": None,  # deprecated in vLLM; fields without a default are always sent
            "medium": "GPU",
            "lora_name": event.lora_name,
        }
        if extra is not None:
            stored["extra_keys"] = extra
        stored.update(group_idx=0, kv_cache_spec_kind="full_attention")
        return stored
    if isinstance(event, BlockRemoved):
        if form == "array":
            return ["BlockRemoved", list(event.block_hashes), "GPU"]
        return {"type": "BlockRemoved", "block_hashes": list(event.block_hashes), "medium": "GPU", "group_idx": 0}
    return ["AllBlocksCleared"] if form == "array" else {"type": "AllBlocksCleared"}


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _hash(value: Any) -> int:
    """A block hash as an integer: vLLM sends ints by default, digest bytes with
    ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``; both fold to the same low 64 bits."""
    if isinstance(value, (bytes, bytearray)):
        return int.from_bytes(value, "big") & _U64
    return int(value)


_STORED_FIELDS = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
                  "extra_keys")  # fmt: skip
_REMOVED_FIELDS = ("block_hashes", "medium")


def _positional(raw: dict[Any, Any], names: Sequence[str]) -> list[Any]:
    fields = {_text(k): v for k, v in raw.items()}
    return [fields.get(name) for name in names]


def decode_event(raw: Sequence[Any] | dict[Any, Any]) -> KVEvent | None:
    """One event from either encoding; unknown tags (future vLLM events) decode to None and are skipped."""
    if isinstance(raw, dict):
        tag = _text(raw.get("type", raw.get(b"type")))
        if tag == "BlockStored":
            raw = [tag, *_positional(raw, _STORED_FIELDS)]
        elif tag == "BlockRemoved":
            raw = [tag, *_positional(raw, _REMOVED_FIELDS)]
        else:
            raw = [tag]
    tag = _text(raw[0]) if raw else None
    if tag == "BlockStored":
        if raw[1] is None or raw[3] is None or raw[4] is None:
            return None  # a store without its hashes or tokens cannot be applied
        lora_name = _text(raw[7]) if len(raw) > 7 else None
        extra = raw[8] if len(raw) > 8 and raw[8] is not None else None
        keys = tuple(_freeze(k) if k else None for k in extra) if extra is not None else None
        parent = None if raw[2] is None else _hash(raw[2])
        return BlockStored(tuple(_hash(h) for h in raw[1]), parent, tuple(raw[3]), int(raw[4]), lora_name, keys)
    if tag == "BlockRemoved":
        return None if raw[1] is None else BlockRemoved(tuple(_hash(h) for h in raw[1]))
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else _text(value)


def encode_batch(
    events: Sequence[KVEvent], ts: float | None = None, dp_rank: int = 0, form: EventForm = "map"
) -> bytes:
    """An EventBatch: positional ``[ts, events, data_parallel_rank]`` in every release; only events changed."""
    ts = ts if ts is not None else time.time()
    return msgpack.packb([ts, [encode_event(e, form) for e in events], dp_rank])


def decode_batch(payload: bytes) -> tuple[float, list[KVEvent]]:
    batch = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    if isinstance(batch, dict):  # a batch encoded as a map, should a release drop array_like there too
        ts, events = batch.get("ts", 0.0), batch.get("events") or []
    else:
        ts, events, *_ = batch
    decoded = (decode_event(r) for r in events if isinstance(r, (list, tuple, dict)))
    return float(ts), [e for e in decoded if e is not None]


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
        return cls(endpoint=endpoint, topic=str(cfg.get("topic", "")).encode())


class EventPublisher:
    """Batches events produced during one engine step and sends them as one message (non-blocking)."""

    def __init__(self, cfg: KVEventsConfig) -> None:
        self.cfg = cfg
        self._ctx: zmq.Context = zmq.Context.instance()  # type: ignore[type-arg]
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
