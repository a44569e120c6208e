"""Router checks: start-up line, records (present, claims, coverage), block-size agreement; both branches."""

from __future__ import annotations

from harness.contract import format_mm_startup, format_routing
from harness.gate.checks.routing import (
    block_size_agrees,
    record_claims_at_most,
    record_forgets_evicted,
    record_spares_new_image,
    router_claims_match_workers,
    router_covers_prompt,
    startup_line_check,
)
from tests.unit.test_checks_replies import reply

M = "Qwen/Qwen3-VL-2B-Instruct"


def log(*records: tuple[str, str, int, int]) -> str:
    lines = [format_mm_startup(M, 16)]
    lines += [format_routing(rid, w, o, t, "kv_mm") for rid, w, o, t in records]
    return "\n".join(lines) + "\n"


def test_startup_line_compares_model_and_block_size() -> None:
    assert startup_line_check(log(), M, 16, True).passed is True
    assert startup_line_check(log(), "other/model", 16, True).passed is False
    wrong_block = startup_line_check(log(), M, 32, True)
    assert wrong_block.passed is False and "block_size=16 (not 32)" in wrong_block.actual
    assert startup_line_check("", M, 16, True).passed is False
    assert startup_line_check("", M, 16, False).passed is None


def test_record_spares_new_image() -> None:
    # Image at offset 5: zero whole blocks precede it, so the record may claim 0.
    r = reply(tag="neg")
    assert record_spares_new_image(log(("rid-neg", "worker0", 0, 19)), r, 5, 16).passed is True
    claimed = record_spares_new_image(log(("rid-neg", "worker0", 19, 19)), r, 5, 16)
    assert claimed.passed is False
    # Declared to keep records but none for this id: a failure, not an n/a.
    missing = record_spares_new_image(log(("other", "worker0", 0, 19)), r, 5, 16)
    assert missing.passed is False and "no record" in missing.actual
    assert record_spares_new_image("", r, 5, 16, keeps_records=False).passed is None


def test_record_claims_at_most() -> None:
    r = reply(tag="second")
    # Second image at offset 267: floor(267 / 16) = 16 blocks may be claimed.
    assert record_claims_at_most("x", log(("rid-second", "w", 16, 33)), r, 16, True, "why").passed is True
    assert record_claims_at_most("x", log(("rid-second", "w", 17, 33)), r, 16, True, "why").passed is False


def test_router_covers_prompt() -> None:
    r = reply(prompt=304, tag="a")  # 304 // 16 = 19 blocks
    assert router_covers_prompt(log(("rid-a", "w", 0, 19)), [r], 16, True).passed is True
    # A router that expands the image to 196 tokens instead of 256 keys 304 - 60 = 244 tokens: 15 blocks.
    assert router_covers_prompt(log(("rid-a", "w", 0, 15)), [r], 16, True).passed is False
    no_key = router_covers_prompt(log(("rid-a", "w", 0, 0)), [r], 16, True)
    assert no_key.passed is False and "no routing key" in no_key.actual
    assert router_covers_prompt(log(), [r], 16, True).passed is False  # missing record
    assert router_covers_prompt("", [r], 16, False).passed is None


def test_router_claims_match_workers() -> None:
    hit = reply(cached=288, prompt=304, tag="h")
    # Claims 19 blocks = 304 tokens, capped at floor(303 / 16) * 16 = 288 = what the worker served.
    assert router_claims_match_workers(log(("rid-h", "worker0", 19, 19)), [hit], 16, True).passed is True
    miss = reply(cached=0, prompt=304, tag="m")
    over = router_claims_match_workers(log(("rid-m", "worker0", 19, 19)), [miss], 16, True)
    assert over.passed is False and "claimed 19 blocks (288 tokens), cached 0" in over.actual
    elsewhere = router_claims_match_workers(log(("rid-h", "worker1", 19, 19)), [hit], 16, True)
    assert elsewhere.passed is False and "record says worker1, served by worker0" in elsewhere.actual
    assert router_claims_match_workers("", [hit], 16, False).passed is None


def test_block_size_agrees() -> None:
    workers = {"worker0": (16, "vllm:cache_config_info"), "worker1": (16, "vllm:cache_config_info")}
    assert block_size_agrees(16, workers, True).passed is True
    bad = block_size_agrees(16, {**workers, "worker1": (32, "vllm:cache_config_info")}, True)
    assert bad.passed is False and "worker1=32" in bad.actual
    assert block_size_agrees(None, workers, True).passed is None  # the evidence rules make this fail when required
    assert block_size_agrees(16, {"worker0": (None, "none")}, True).passed is None


def test_record_forgets_evicted() -> None:
    # 304 prompt tokens at B=16: the cache cap is 18 blocks (288 tokens); the workers were cleared.
    r = reply(cached=0, tag="ev")
    assert record_forgets_evicted(log(("rid-ev", "worker0", 0, 19)), r, 16, True, True).passed is True
    stale = record_forgets_evicted(log(("rid-ev", "worker0", 19, 19)), r, 16, True, True)
    assert stale.passed is False and "overlap_blocks=19 (288 tokens) cached_tokens=0" in stale.actual
    # What the worker did hold again (a neighbour re-cached 2 blocks) may be claimed, no more.
    held = reply(cached=32, tag="ev")
    assert record_forgets_evicted(log(("rid-ev", "worker0", 2, 19)), held, 16, True, True).passed is True
    assert record_forgets_evicted(log(("rid-ev", "worker0", 3, 19)), held, 16, True, True).passed is False
    assert record_forgets_evicted(log(), r, 16, True, True).passed is False  # declared records, none for this id
    assert "no KV events" in record_forgets_evicted(log(("rid-ev", "worker0", 19, 19)), r, 16, True, False).actual
    assert record_forgets_evicted(log(("rid-ev", "worker0", 19, 19)), r, 16, True, False).passed is None
    assert record_forgets_evicted("", r, 16, False, True).passed is None
