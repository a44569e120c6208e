"""Routing records: the harness contract and Dynamo's format, parsed as numbers, filtered by exact request id."""

from __future__ import annotations

from harness.gate.checks.routing_log import RoutingRecord, parse_routing_records, records_for, startup_line

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
    info = startup_line(text)
    assert info == {"model": "Qwen/Qwen3-VL-2B-Instruct", "block_size": "16"}
    assert info is not None and int(info["block_size"] or 0) == 16


def test_startup_line_without_block_size() -> None:
    assert startup_line("MM-aware KV routing enabled model=llava-hf/llava-1.5-7b-hf") == {
        "model": "llava-hf/llava-1.5-7b-hf",
        "block_size": None,
    }


def test_startup_line_absent() -> None:
    assert startup_line(f"{HARNESS_LINE}\nKV routing enabled model=x block_size=16") is None
    assert startup_line("") is None
