"""The contract's lines, each formatter against its parser: routing records (the harness's and Dynamo's), parsed as
numbers and filtered by exact request id; the start-up line; the launch lines; LoRA cold loads."""

from __future__ import annotations

from harness.contract import (
    RoutingRecord,
    StartupLine,
    format_failed,
    format_lora_cold_load,
    format_mm_startup,
    format_phase,
    format_ready,
    format_routing,
    parse_failed,
    parse_lora_cold_loads,
    parse_mm_startup,
    parse_phases,
    parse_ready,
    parse_routing_records,
    records_for,
)

HARNESS_LINE = "[ROUTING] request_id=req-1 worker=worker1 overlap_blocks=19 total_blocks=20 policy=kv_mm"
DYNAMO_LINE = (
    "2025-01-01T00:00:00.123Z INFO dynamo_llm::kv_router::scheduler: [ROUTING] Best: worker_7 dp_rank=0 with "
    "19/20 blocks overlap request_id=abc worker_id=7 overlap_blocks=19 total_blocks=20"
)


def test_parse_harness_record() -> None:
    (r,) = parse_routing_records(HARNESS_LINE)
    assert r == RoutingRecord("req-1", "worker1", 19, 20, "kv_mm", "harness")
    assert isinstance(r.overlap_blocks, int) and isinstance(r.total_blocks, int)
    assert r.overlap_ratio == 0.95


def test_parse_harness_record_with_log_prefix() -> None:
    line = f"2025-01-01 12:00:00,001 INFO harness.proxy: {HARNESS_LINE}"
    (r,) = parse_routing_records(line)
    assert (r.request_id, r.worker, r.overlap_blocks, r.total_blocks) == ("req-1", "worker1", 19, 20)


def test_parse_dynamo_record() -> None:
    (r,) = parse_routing_records(DYNAMO_LINE)
    assert r.format == "dynamo"
    assert r.request_id == "abc"
    assert r.worker == "worker_7"
    assert (r.overlap_blocks, r.total_blocks) == (19, 20)
    assert r.policy is None


def test_parse_dynamo_record_without_dp_rank_or_request_id() -> None:
    (r,) = parse_routing_records("[ROUTING] Best: worker_3 with 0/12 blocks overlap")
    assert (r.worker, r.overlap_blocks, r.total_blocks, r.request_id) == ("worker_3", 0, 12, None)
    assert r.overlap_ratio == 0.0


def test_dynamo_request_id_stops_at_comma() -> None:
    (r,) = parse_routing_records("[ROUTING] Best: worker_1 with 2/4 blocks overlap, request_id=xyz-9, extra=1")
    assert r.request_id == "xyz-9"


def test_numbers_compare_numerically_not_as_strings() -> None:
    text = "\n".join(
        [
            "[ROUTING] request_id=a worker=w0 overlap_blocks=9 total_blocks=10 policy=kv_mm",
            "[ROUTING] request_id=b worker=w1 overlap_blocks=10 total_blocks=100 policy=kv_mm",
            "[ROUTING] request_id=c worker=w1 overlap_blocks=100 total_blocks=120 policy=kv_mm",
            "[ROUTING] Best: worker_2 with 99/120 blocks overlap request_id=d",
        ]
    )
    a, b, c, d = parse_routing_records(text)
    assert a.overlap_ratio > b.overlap_ratio  # 0.9 > 0.1, although "10" > "9" is false as strings
    assert b.overlap_blocks > a.overlap_blocks  # 10 > 9, although "10" < "9" as strings
    assert c.overlap_blocks > d.overlap_blocks  # 100 > 99, although "100" < "99" as strings
    assert max([a, b, c, d], key=lambda r: r.overlap_blocks) is c


def test_zero_total_blocks_ratio() -> None:
    (r,) = parse_routing_records("[ROUTING] request_id=z worker=w overlap_blocks=0 total_blocks=0 policy=p")
    assert r.overlap_ratio == 0.0


def test_lines_without_routing_tag_ignored() -> None:
    text = "\n".join(
        [
            "INFO: started server",
            "request_id=req-1 worker=w0 overlap_blocks=3 total_blocks=4 policy=kv_mm",  # no [ROUTING] tag
            "Best: worker_1 with 3/4 blocks overlap request_id=req-1",  # no [ROUTING] tag
            "[ROUTING] something we do not understand",
            "",
            HARNESS_LINE,
        ]
    )
    records = parse_routing_records(text)
    assert [(r.request_id, r.worker) for r in records] == [("req-1", "worker1")]


def test_mixed_formats_in_order() -> None:
    records = parse_routing_records(f"{DYNAMO_LINE}\nnoise\n{HARNESS_LINE}\n")
    assert [r.format for r in records] == ["dynamo", "harness"]


def test_records_for_exact_request_id_not_prefix() -> None:
    text = "\n".join(
        [
            "[ROUTING] request_id=req-10 worker=w1 overlap_blocks=0 total_blocks=5 policy=kv_mm",
            "[ROUTING] request_id=req-1 worker=w0 overlap_blocks=5 total_blocks=5 policy=kv_mm",
            "[ROUTING] request_id=req-100 worker=w1 overlap_blocks=1 total_blocks=5 policy=kv_mm",
            "[ROUTING] Best: worker_2 with 1/5 blocks overlap request_id=req-1x worker_id=2",
            "[ROUTING] Best: worker_3 with 4/5 blocks overlap request_id=req-1 worker_id=3",
            "[ROUTING] request_id=xreq-1 worker=w9 overlap_blocks=2 total_blocks=5 policy=kv_mm",
        ]
    )
    mine = records_for(text, "req-1")
    assert [(r.worker, r.overlap_blocks) for r in mine] == [("w0", 5), ("worker_3", 4)]
    assert [r.worker for r in records_for(text, "req-10")] == ["w1"]
    assert [r.overlap_blocks for r in records_for(text, "req-100")] == [1]
    assert records_for(text, "req") == []
    assert records_for(text, "missing") == []


def test_startup_line_with_block_size() -> None:
    text = "INFO boot\nMM-aware KV routing enabled model=Qwen/Qwen3-VL-2B-Instruct block_size=16\nmore"
    info = parse_mm_startup(text)
    assert info == StartupLine("Qwen/Qwen3-VL-2B-Instruct", 16)
    assert info is not None and info.block_size == 16


def test_startup_line_without_block_size() -> None:
    assert parse_mm_startup("MM-aware KV routing enabled model=llava-hf/llava-1.5-7b-hf") == StartupLine(
        "llava-hf/llava-1.5-7b-hf", None
    )


def test_startup_line_absent() -> None:
    assert parse_mm_startup(f"{HARNESS_LINE}\nKV routing enabled model=x block_size=16") is None
    assert parse_mm_startup("") is None


# --- each formatter against its parser ----------------------------------------------------------------------------


def test_routing_record_round_trip() -> None:
    line = format_routing("req-9", "sim-8001", 3, 12, "kv_mm")
    assert line == HARNESS_LINE.replace("req-1", "req-9").replace("worker1", "sim-8001").replace("19", "3").replace(
        "20", "12"
    )
    assert parse_routing_records(f"2026-01-01 00:00:00,000 INFO [proxy] {line}") == [
        RoutingRecord("req-9", "sim-8001", 3, 12, "kv_mm", "harness")
    ]


def test_routing_record_must_end_the_line() -> None:
    """Text after the record (a client-controlled string logged on the same line) voids it."""
    assert parse_routing_records(HARNESS_LINE + " path=/x") == []


def test_startup_round_trip() -> None:
    assert parse_mm_startup(format_mm_startup("Qwen/Qwen2.5-VL-3B-Instruct", 32)) == StartupLine(
        "Qwen/Qwen2.5-VL-3B-Instruct", 32
    )


def test_launch_lines_round_trip() -> None:
    text = "\n".join(
        ["noise", format_phase("workers", 1.23456), format_phase("router", 0.5), format_ready("http://127.0.0.1:9")]
    )
    assert parse_ready(text) == "http://127.0.0.1:9"
    assert parse_phases(text) == {"workers": 1.235, "router": 0.5}
    assert parse_failed(text) is None
    assert parse_ready("HARNESS_READY url=") is None
    assert parse_failed(format_failed("worker1 exited\nwith code 1")) == "worker1 exited with code 1"


def test_lora_cold_load_round_trip() -> None:
    line = format_lora_cold_load("r1", "my-lora", "my-lora@abc123", "sim-1", 0.1, 0.2, 3.5)
    (rec,) = parse_lora_cold_loads(f"INFO [proxy] {line}\nother")
    assert (rec.request_id, rec.adapter, rec.identity, rec.worker) == ("r1", "my-lora", "my-lora@abc123", "sim-1")
    assert parse_lora_cold_loads("[LORA] evicted adapter=my-lora worker=sim-1 status=200") == []
