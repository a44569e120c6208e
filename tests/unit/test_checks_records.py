"""The router-record checks that judge a stack whose engine is blind to images (Dynamo's mocker), both branches,
with hand-computed numbers, on Dynamo 1.6.1's record format (taken from a real ``DYN_LOG=debug`` run)."""

from __future__ import annotations

from harness.contract import format_mm_startup, format_routing
from harness.gate.checks.replies import burst_stays_home
from harness.gate.checks.routing import (
    BURST_CLAIMS,
    IMAGE_BLIND,
    block_size_from_records,
    burst_records_claim,
    record_blocks,
    record_claims_at_least,
    router_claims_match_workers,
    router_covers_prompt,
    router_covers_reference,
    startup_line_check,
)
from tests.unit.gate_fakes import dynamo_record
from tests.unit.test_checks_replies import reply

M = "Qwen/Qwen3-VL-2B-Instruct"
DYNAMO_STARTUP = "2026-12-02T07:38:37.824682Z  INFO mm_routing: MM-aware KV routing enabled model=/s/model model_dir=/c"


def dyn(*records: tuple[str, int, int, int]) -> str:
    return "\n".join([DYNAMO_STARTUP, *(dynamo_record(rid, w, o, t) for rid, w, o, t in records)]) + "\n"


def test_record_blocks_follow_each_formats_convention() -> None:
    # Dynamo counts the partial last block (div_ceil); the harness proxy counts whole blocks.
    assert record_blocks(353, 16, "dynamo") == 23 and record_blocks(352, 16, "dynamo") == 22
    assert record_blocks(353, 16, "harness") == 22


def test_startup_line_accepts_the_served_path_and_leaves_an_unstated_block_size_na() -> None:
    ok = startup_line_check(DYNAMO_STARTUP, M, 16, True, ["/s/model"])
    assert ok.passed is True and "block_size not stated" in ok.actual
    unserved = startup_line_check(DYNAMO_STARTUP, M, 16, True, ["/other/model"])
    assert unserved.passed is False and "model=/s/model" in unserved.actual
    assert startup_line_check(DYNAMO_STARTUP, M, 16, True).passed is False
    # A stated block size is still compared.
    assert startup_line_check(format_mm_startup(M, 32), M, 16, True, ["/s/model"]).passed is False


def test_block_size_from_text_only_records() -> None:
    text = reply(prompt=25, tag="t")  # 25 tokens: 2 blocks of 16 counting the partial one, 1 of 32
    assert block_size_from_records(dyn(("rid-t", 1, 0, 2)), [text], 16, True).passed is True
    wrong = block_size_from_records(dyn(("rid-t", 1, 0, 1)), [text], 16, True)
    assert wrong.passed is False and "25 tokens at 16 -> 2" in wrong.actual
    assert block_size_from_records(dyn(), [text], 16, True).passed is False  # declared records, none for it
    assert block_size_from_records(dyn(), [], 16, True).passed is None
    assert block_size_from_records("", [text], 16, False).passed is None


def test_router_covers_the_reference_expansion() -> None:
    # The mocker's 98 tokens hold one placeholder; the reference puts 256 there: 353 tokens -> 23 Dynamo blocks.
    first = reply(prompt=98, tag="first")
    assert router_covers_reference(dyn(("rid-first", 1, 0, 23)), [(first, 353)], 16, True).passed is True
    short = router_covers_reference(dyn(("rid-first", 1, 0, 3)), [(first, 353)], 16, True)  # image left out
    assert short.passed is False and "reference 353 tokens -> 23" in short.actual
    assert router_covers_reference(dyn(), [(first, 353)], 16, True).passed is False
    assert router_covers_reference(dyn(("rid-first", 1, 0, 23)), [(first, None)], 16, True).passed is None
    assert router_covers_reference("", [(first, 353)], 16, False).passed is None


def test_the_engine_comparisons_are_na_for_an_image_blind_engine() -> None:
    r = reply(prompt=98, cached=96, tag="a")
    for check in (
        router_covers_prompt(dyn(("rid-a", 1, 0, 23)), [r], 16, True, engine_sees_images=False),
        router_claims_match_workers(dyn(("rid-a", 1, 23, 23)), [r], 16, True, engine_sees_images=False),
    ):
        assert check.passed is None and check.actual == IMAGE_BLIND
    # With an engine that counts images, the same record against 98 prompt tokens fails (98 -> 7 blocks).
    assert router_covers_prompt(dyn(("rid-a", 1, 0, 23)), [r], 16, True).passed is False
    assert router_covers_prompt(dyn(("rid-a", 1, 0, 7)), [r], 16, True).passed is True


def test_record_claims_at_least() -> None:
    r = reply(tag="repeat")
    assert record_claims_at_least("x", dyn(("rid-repeat", 1, 23, 23)), r, 22, True, "why", "worker_1").passed
    assert record_claims_at_least("x", dyn(("rid-repeat", 1, 0, 23)), r, 22, True, "why").passed is False
    elsewhere = record_claims_at_least("x", dyn(("rid-repeat", 2, 23, 23)), r, 22, True, "why", "worker_1")
    assert elsewhere.passed is False and "worker=worker_2" in elsewhere.actual
    assert record_claims_at_least("x", dyn(), r, 22, True, "why").passed is False
    assert record_claims_at_least("x", "", r, 22, False, "why").passed is None
    harness = format_routing("rid-repeat", "worker0", 22, 22, "kv_mm")
    assert record_claims_at_least("x", harness, r, 22, True, "why", "worker0").passed is True


def test_burst_records_claim() -> None:
    burst = [reply(tag=f"b{i}") for i in range(3)]
    home = dyn(*((f"rid-b{i}", 1, 23, 23) for i in range(3)))
    assert burst_records_claim(home, burst, 22, "worker_1", True).passed is True
    scattered = dyn(("rid-b0", 1, 0, 23), ("rid-b1", 2, 0, 23), ("rid-b2", 1, 0, 23))
    bad = burst_records_claim(scattered, burst, 22, "worker_1", True)
    assert bad.passed is False and bad.name == BURST_CLAIMS and "'worker_2': 1" in bad.actual
    one_away = dyn(("rid-b0", 1, 23, 23), ("rid-b1", 2, 23, 23), ("rid-b2", 1, 23, 23))
    assert burst_records_claim(one_away, burst, 22, "worker_1", True).passed is False
    assert burst_records_claim(dyn(("rid-b0", 1, 23, 23)), burst, 22, "worker_1", True).passed is False
    assert burst_records_claim(home, burst, 22, None, True).passed is None
    assert burst_records_claim("", burst, 22, "worker_1", False).passed is None


def test_burst_stays_home_judges_placement_only_for_an_image_blind_engine() -> None:
    burst = [reply(cached=0, tag=f"b{i}", worker="w1") for i in range(3)]
    assert burst_stays_home(burst, "w1", 96, 2).passed is False  # the cache did not hit
    placed = burst_stays_home(burst, "w1", 96, 2, judge_cache=False)
    assert placed.passed is True and "placement only" in placed.expected
    away = [*burst[:2], reply(cached=0, tag="b2", worker="w2")]
    assert burst_stays_home(away, "w1", 96, 2, judge_cache=False).passed is False
