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
#: Captured from Dynamo 1.6.1 (frontend ``--router-mode kv``, two mockers, ``DYN_LOG=debug``,
#: ``DYN_SDK_DISABLE_ANSI_LOGGING=1``), the client's ``X-Request-Id: cap-repeat-2``; the line is verbatim.
DYNAMO_LINE = (
    "2026-12-02T06:53:09.149862Z DEBUG http-request:kv_router.select_worker: "
    "dynamo_llm::kv_router::routing_host::kv_selection: [ROUTING] Best: worker_9456074223902533122 dp_rank=0 "
    "with 21/21 blocks overlap request_id=05c95e1f-5dd8-41f3-8a80-48e91abcfa51 worker_id=9456074223902533122 "
    "dp_rank=0 overlap_blocks=21 total_blocks=21 method=POST uri=/v1/chat/completions version=HTTP/1.1 "
    'x_request_id="cap-repeat-2" request_id=fc601100-523f-41c0-98b9-ae1d1a36febf model="Qwen/Qwen3-VL-2B-Instruct"'
)


def dynamo_line(worker: int, overlap: int, total: int, x_request_id: str | None, ts: str = "06:53:09.1") -> str:
    """A record in the captured layout (``DYNAMO_LINE``) with other numbers and client id."""
    line = (
        f"2026-12-02T{ts}Z DEBUG http-request:kv_router.select_worker: "
        f"dynamo_llm::kv_router::routing_host::kv_selection: [ROUTING] Best: worker_{worker} dp_rank=0 with "
        f"{overlap}/{total} blocks overlap request_id=05c95e1f worker_id={worker} dp_rank=0 "
        f"overlap_blocks={overlap} total_blocks={total} method=POST uri=/v1/chat/completions version=HTTP/1.1"
    )
    if x_request_id is not None:
        line += f' x_request_id="{x_request_id}"'
    return line + ' request_id=fc601100 model="Qwen/Qwen3-VL-2B-Instruct"'


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
    """The request id is the client's (``x_request_id``), not either of Dynamo's own ``request_id`` fields."""
    (r,) = parse_routing_records(DYNAMO_LINE)
    assert r.format == "dynamo"
    assert r.request_id == "cap-repeat-2"
    assert r.worker == "worker_9456074223902533122"
    assert (r.overlap_blocks, r.total_blocks) == (21, 21)
    assert r.policy is None
    assert records_for(DYNAMO_LINE, "05c95e1f-5dd8-41f3-8a80-48e91abcfa51") == []
    assert records_for(DYNAMO_LINE, "fc601100-523f-41c0-98b9-ae1d1a36febf") == []


def test_parse_dynamo_record_without_client_request_id() -> None:
    """A client that sent no ``X-Request-Id``: the record parses, with no request id to match."""
    (r,) = parse_routing_records(dynamo_line(3, 0, 12, None))
    assert (r.worker, r.overlap_blocks, r.total_blocks, r.request_id) == ("worker_3", 0, 12, None)
    assert r.overlap_ratio == 0.0
    (bare,) = parse_routing_records("[ROUTING] Best: worker_3 with 0/12 blocks overlap")  # no tracing header
    assert (bare.worker, bare.request_id) == ("worker_3", None)


def test_dynamo_client_request_id_with_escaped_quote() -> None:
    """Tracing Debug-quotes the field: an escaped quote in the client's id neither ends it nor forges another."""
    (r,) = parse_routing_records(dynamo_line(1, 2, 4, 'a\\" x_request_id=\\"victim'))
    assert r.request_id == 'a" x_request_id="victim'
    assert records_for(dynamo_line(1, 2, 4, 'a\\" x_request_id=\\"victim'), "victim") == []


def test_numbers_compare_numerically_not_as_strings() -> None:
    text = "\n".join(
        [
            "[ROUTING] request_id=a worker=w0 overlap_blocks=9 total_blocks=10 policy=kv_mm",
            "[ROUTING] request_id=b worker=w1 overlap_blocks=10 total_blocks=100 policy=kv_mm",
            "[ROUTING] request_id=c worker=w1 overlap_blocks=100 total_blocks=120 policy=kv_mm",
            dynamo_line(2, 99, 120, "d"),
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
            dynamo_line(2, 1, 5, "req-1x"),
            dynamo_line(3, 4, 5, "req-1"),
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


# -- log forgery: a record is only a record on the component's own line ------------------------------------------
FORGED = "[ROUTING] request_id=victim worker=w9 overlap_blocks=20 total_blocks=20 policy=kv_mm"


def test_record_after_the_harness_logger_header_parses() -> None:
    (r,) = parse_routing_records(f"2026-01-02 03:04:05,678 INFO [proxy] {HARNESS_LINE}")
    assert (r.request_id, r.worker) == ("req-1", "worker1")


def test_record_embedded_in_another_log_line_is_not_parsed() -> None:
    """A client path or error text carrying a whole record, on one line, after other text: no record."""
    lines = [
        f"2026-01-02 03:04:05,678 INFO [proxy] request_id=abc GET /x {FORGED}",
        f"2026-01-02 03:04:05,678 WARNING [worker0] request_id=abc connection closed: {FORGED}",
        f"2026-01-02 03:04:05,678 INFO [proxy] request_id=abc GET /x {FORGED} status=404 latency_ms=1.0",
        f"junk {FORGED}",
        f"{FORGED} trailing",
    ]
    assert parse_routing_records("\n".join(lines)) == []
    assert records_for("\n".join(lines), "victim") == []


def test_escaped_path_cannot_start_a_line() -> None:
    """``escape_log`` leaves no newline or space of a client's path in the log line."""
    from harness.contract import escape_log

    path = "/x\n" + FORGED
    line = f"2026-01-02 03:04:05,678 INFO [proxy] request_id=abc GET {escape_log(path)} status=404"
    assert "\n" not in line and parse_routing_records(line) == []
    assert escape_log("/v1/chat/completions") == "/v1/chat/completions"
    assert escape_log("/a b%\r\u2100") == "/a%20b%25%0D%E2%84%80"


def test_dynamo_client_text_cannot_shadow_or_forge_a_record() -> None:
    """Tracing writes span fields (the client's ``x_request_id``, ``uri``) after the message: a record the
    client writes into them neither replaces the router's own nor turns another line into a record."""
    spoof = '[ROUTING] Best: worker_9 with 20/20 blocks overlap x_request_id=\\"victim\\"'  # as logged
    (r,) = parse_routing_records(dynamo_line(1, 3, 20, spoof))
    assert (r.worker, r.overlap_blocks, r.request_id) == ("worker_1", 3, spoof.replace("\\", ""))
    received = (  # another of Dynamo's lines, the client's id in its span fields (captured layout)
        "2026-12-02T06:53:56.618072Z  INFO http-request: dynamo_llm::http::service::metrics: request received "
        "request_id=66664020 model=Qwen/Qwen3-VL-2B-Instruct endpoint=chat_completions request_type=unary "
        f'method=POST uri=/v1/chat/completions version=HTTP/1.1 x_request_id="{spoof}" request_id=261a5e84'
    )
    assert parse_routing_records(received) == []
    assert parse_routing_records(f"something else {spoof}") == []
    assert records_for(dynamo_line(1, 3, 20, spoof), "victim") == []


def test_coloured_dynamo_line_parses() -> None:
    """Captured with ``DYN_SDK_DISABLE_ANSI_LOGGING=0`` (the launch script turns colours off; a user may not);
    ``~`` stands for ESC."""
    line = (
        '~[2m2026-12-02T07:06:20.096418Z~[0m ~[34mDEBUG~[0m '
        '~[1mhttp-request~[0m:~[1mkv_router.select_worker~[0m: '
        '~[2mdynamo_llm::kv_router::routing_host::kv_selection~[0m~[2m:~[0m [ROUTING] Best: '
        'worker_6377265082176159264 dp_rank=0 with 0/2 blocks overlap '
        '~[3mrequest_id~[0m~[2m=~[0m978f8b4d-43b7-46a5-9796-f8d879e0ead9 '
        '~[3mworker_id~[0m~[2m=~[0m6377265082176159264 ~[3mdp_rank~[0m~[2m=~[0m0 '
        '~[3moverlap_blocks~[0m~[2m=~[0m0 ~[3mtotal_blocks~[0m~[2m=~[0m2 '
        '~[2m~[3mmethod~[0m~[2m=~[0mPOST ~[3muri~[0m~[2m=~[0m/v1/chat/completions '
        '~[3mversion~[0m~[2m=~[0mHTTP/1.1 ~[3mx_request_id~[0m~[2m=~[0m"ansi-1" '
        '~[3mrequest_id~[0m~[2m=~[0m6b62dbe6-64e4-423e-a802-b5aeb12038af '
        '~[3mmodel~[0m~[2m=~[0m"Qwen/Qwen3-VL-2B-Instruct"~[0m'
    ).replace("~", "\x1b")
    (r,) = parse_routing_records(line)
    assert (r.worker, r.overlap_blocks, r.total_blocks) == ("worker_6377265082176159264", 0, 2)
    assert r.request_id == "ansi-1"
