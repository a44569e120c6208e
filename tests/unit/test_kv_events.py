"""KV events on the wire: msgpack batches in vLLM's shape, the config object and a real ZMQ PUB/SUB round trip."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest

from harness.server.kv_events import (
    DEFAULT_TOPIC,
    EventPublisher,
    EventSubscriber,
    KVEventsConfig,
    decode_batch,
    decode_event,
    encode_batch,
    encode_event,
)
from harness.sim.kv_cache import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from harness.stack.ports import allocate_ports, release_ports

STORED = BlockStored(block_hashes=(11, 12), parent_block_hash=10, token_ids=tuple(range(32)), block_size=16)
STORED_LORA = BlockStored(
    block_hashes=(2**63 - 1,), parent_block_hash=None, token_ids=(1, 2, 3), block_size=16, lora_name="sql-lora"
)
REMOVED = BlockRemoved(block_hashes=(11, 12, 13))
CLEARED = AllBlocksCleared()


# --- encoding ---------------------------------------------------------------------------------------------------


def test_batch_round_trip() -> None:
    events: list[KVEvent] = [STORED, STORED_LORA, REMOVED, CLEARED]
    ts, decoded = decode_batch(encode_batch(events, ts=123.5, dp_rank=3))
    assert ts == 123.5
    assert decoded == events


def test_batch_default_timestamp_is_now() -> None:
    before = time.time()
    ts, decoded = decode_batch(encode_batch([CLEARED]))
    assert before <= ts <= time.time()
    assert decoded == [CLEARED]


def test_encoded_shape_matches_vllm_0_33_maps() -> None:
    """vLLM 0.33 encodes events as tagged maps (PR #42892 dropped ``array_like`` from ``KVCacheEvent`` in
    ``vllm/distributed/kv_events.py``); fields without a default are always present, defaults omitted; the batch
    stays positional."""
    assert encode_event(STORED) == {
        "type": "BlockStored",
        "block_hashes": [11, 12],
        "parent_block_hash": 10,
        "token_ids": list(range(32)),
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
        "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
    }
    removed = {"type": "BlockRemoved", "block_hashes": [11, 12, 13], "medium": "GPU", "group_idx": 0}
    assert encode_event(REMOVED) == removed
    assert encode_event(CLEARED) == {"type": "AllBlocksCleared"}
    ts, events, dp_rank = msgpack.unpackb(encode_batch([REMOVED], ts=1.0, dp_rank=2))
    assert (ts, events, dp_rank) == (1.0, [encode_event(REMOVED)], 2)


def test_older_array_form_still_encodes_and_decodes() -> None:
    assert encode_event(STORED, "array") == ["BlockStored", [11, 12], 10, list(range(32)), 16, None, "GPU", None, None]
    assert encode_event(REMOVED, "array") == ["BlockRemoved", [11, 12, 13], "GPU"]
    assert encode_event(CLEARED, "array") == ["AllBlocksCleared"]
    events: list[KVEvent] = [STORED, STORED_LORA, REMOVED, CLEARED]
    assert decode_batch(encode_batch(events, ts=5.0, form="array")) == (5.0, events)


def test_decode_a_captured_vllm_map_event() -> None:
    """The shape a vLLM 0.26 publisher sent (volcano-sh/kthena issue #1535): positional batch, map events with
    group_idx and kv_cache_spec_kind; ``extra_keys`` one null per block."""
    tokens = [151644, 872, 198, 9064, 374, 279, 6722, 315, 5616, 30, 151645, 198, 151644, 77091, 198, 151667]
    raw = {
        "type": "BlockStored",
        "block_hashes": [15760518052499183552],
        "parent_block_hash": None,
        "token_ids": tokens,
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
        "extra_keys": [None],
        "group_idx": 0,
        "kv_cache_spec_kind": "full_attention",
    }
    removed = {"type": "BlockRemoved", "block_hashes": [7], "medium": "GPU", "group_idx": 0}
    payload = msgpack.packb([1789095808.8378847, [raw, removed, {"type": "AllBlocksCleared"}, {"type": "New"}], 0])
    ts, events = decode_batch(payload)
    assert ts == 1789095808.8378847
    assert events == [
        BlockStored((15760518052499183552,), None, tuple(tokens), 16, None, (None,)),
        BlockRemoved((7,)),
        CLEARED,
    ]


def test_decode_digest_bytes_hashes_fold_to_low_64_bits() -> None:
    """With ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`` vLLM sends 32-byte digests; ``maybe_convert_block_hash``
    (``vllm/v1/core/kv_cache_utils.py``) would have sent their low 64 bits, so both name one block alike."""
    digest = bytes(range(32))
    low = int.from_bytes(digest, "big") & ((1 << 64) - 1)
    raw = {"type": "BlockStored", "block_hashes": [digest], "parent_block_hash": digest, "token_ids": [1],
           "block_size": 1, "lora_id": None, "medium": "GPU", "lora_name": None}  # fmt: skip
    payload = msgpack.packb([0.0, [raw, {"type": "BlockRemoved", "block_hashes": [digest], "medium": "GPU"}], 0])
    assert decode_batch(payload)[1] == [BlockStored((low,), low, (1,), 1), BlockRemoved((low,))]


def test_unknown_tags_are_skipped() -> None:
    payload = msgpack.packb(
        [7.0, [["SomethingNew", 1, 2], ["BlockRemoved", [5], "GPU"], [], ["AllBlocksCleared"], ["Other"]], 0]
    )
    ts, events = decode_batch(payload)
    assert ts == 7.0
    assert events == [BlockRemoved((5,)), CLEARED]
    assert decode_event(["NoSuchEvent"]) is None
    assert decode_event([]) is None


def test_decode_vllm_shaped_batch_without_lora_name() -> None:
    tokens = list(range(100, 116))
    payload = msgpack.packb([1712345678.25, [["BlockStored", [1, 2], None, tokens, 16, None, "GPU"]], 0])
    ts, events = decode_batch(payload)
    assert ts == 1712345678.25
    assert events == [BlockStored((1, 2), None, tuple(tokens), 16, None)]


def test_decode_binary_tags() -> None:
    payload = msgpack.packb([0, [[b"BlockRemoved", [9], b"GPU"], [b"AllBlocksCleared"]], 0], use_bin_type=True)
    assert decode_batch(payload)[1] == [BlockRemoved((9,)), CLEARED]


def test_decode_ignores_extra_batch_fields() -> None:
    payload = msgpack.packb([2, [["AllBlocksCleared"]], 0, "future", {"x": 1}])
    assert decode_batch(payload) == (2.0, [CLEARED])


# --- config -----------------------------------------------------------------------------------------------------


def test_config_disabled_is_none() -> None:
    assert KVEventsConfig.from_json({}) is None
    assert KVEventsConfig.from_json({"enable_kv_cache_events": False, "endpoint": "tcp://127.0.0.1:1"}) is None


def test_config_non_zmq_publisher_is_rejected() -> None:
    with pytest.raises(ValueError, match="'kafka'"):
        KVEventsConfig.from_json({"enable_kv_cache_events": True, "publisher": "kafka"})


def test_config_defaults_and_wildcard_rewrite() -> None:
    cfg = KVEventsConfig.from_json({"enable_kv_cache_events": True})
    # vLLM's default topic is empty (KVEventsConfig.topic in vllm/config/kv_events.py).
    assert cfg == KVEventsConfig(endpoint="tcp://127.0.0.1:5557", topic=b"")
    assert DEFAULT_TOPIC == b""
    cfg = KVEventsConfig.from_json(
        {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:25001", "topic": "mine"}
    )
    assert cfg is not None
    assert cfg.endpoint == "tcp://127.0.0.1:25001"
    assert cfg.topic == b"mine"


# --- real PUB/SUB ------------------------------------------------------------------------------------------------


async def _pub_sub_round_trip(port: int) -> list[tuple[int, list[KVEvent]]]:
    cfg = KVEventsConfig(endpoint=f"tcp://127.0.0.1:{port}")
    pub = EventPublisher(cfg)
    sub = EventSubscriber(cfg.endpoint, cfg.topic)
    received: list[tuple[int, list[KVEvent]]] = []
    try:

        async def first_message() -> None:
            # Slow joiner: messages sent before the subscription reaches the publisher are dropped, so keep
            # sending until one arrives. One pending recv, never cancelled mid-message.
            pending = asyncio.ensure_future(sub.recv())
            while True:
                pub.add(STORED)
                pub.flush()
                done, _ = await asyncio.wait({pending}, timeout=0.02)
                if done:
                    received.append(pending.result())
                    return

        await asyncio.wait_for(first_message(), timeout=5.0)
        seq_before = pub.seq
        assert seq_before >= 1
        pub.flush()  # nothing pending: sends nothing, consumes no sequence number
        assert pub.seq == seq_before
        for batch in ([REMOVED], [STORED_LORA, CLEARED], [STORED]):
            for event in batch:
                pub.add(event)
            pub.flush()
        assert pub.seq == seq_before + 3
        while len(received) < 4 or received[-1][1] != [STORED] or received[-1][0] != seq_before + 2:
            received.append(await asyncio.wait_for(sub.recv(), timeout=5.0))
    finally:
        sub.close()
        pub.close()
    return received


def test_pub_sub_round_trip() -> None:
    (port,) = allocate_ports(1)
    try:
        received = asyncio.run(_pub_sub_round_trip(port))
    finally:
        release_ports([port])
    seqs = [seq for seq, _ in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # strictly increasing
    assert received[0][1] == [STORED]
    # After the first delivery nothing is lost: the three batches follow, in order, with consecutive numbers.
    tail = received[-3:]
    assert [events for _, events in tail] == [[REMOVED], [STORED_LORA, CLEARED], [STORED]]
    assert [seq for seq, _ in tail] == list(range(tail[0][0], tail[0][0] + 3))


def test_block_stored_carries_extra_keys_per_block() -> None:
    """Image hashes reach subscribers: each stored block's ("mm", hash, offset) keys survive the wire."""
    from harness.server.kv_events import BlockStored, decode_batch, encode_batch

    event = BlockStored(
        (1, 2), None, tuple(range(32)), 16, "lora-a", ((("lora", "lora-a", "/p"), ("mm", "abc", 5)), None)
    )
    _, (back,) = decode_batch(encode_batch([event]))
    assert back == event
