"""Reply checks: each one's passing and failing branch, with numbers worked out by hand (block size 16)."""

from __future__ import annotations

from typing import Any

from harness.gate.checks.replies import (
    Reply,
    burst_spreads,
    burst_stays_home,
    cached_at_least,
    cached_at_most,
    cached_exactly,
    names_colours,
    response_problems,
    same_worker,
    staircase,
    valid_reply,
)


def reply(
    cached: int | None = 0,
    prompt: int = 304,
    worker: str | None = "worker0",
    status: int = 200,
    content: str = "The image shows green.",
    tag: str = "r",
    via: str | None = "header:X-Served-By",
) -> Reply:
    details: dict[str, Any] = {} if cached is None else {"cached_tokens": cached}
    body = {
        "choices": [{"message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": prompt, "prompt_tokens_details": details},
    }
    return Reply(tag, f"rid-{tag}", status, body, worker, 0.01, [], via)


def test_valid_reply_and_missing_cached_tokens() -> None:
    assert valid_reply(reply()).passed is True
    bad = valid_reply(reply(cached=None))
    assert bad.passed is False and "cached_tokens is malformed" in bad.actual  # a details object without a count
    assert valid_reply(reply(status=500)).passed is False
    assert response_problems([]) == ["response is not a JSON object"]


def test_names_colours() -> None:
    assert names_colours(reply(content="green and blue"), ["green", "blue"]).passed is True
    assert names_colours(reply(content="green"), ["green", "blue"]).passed is False


def test_cached_exactly_uses_the_stacks_prompt_tokens() -> None:
    # P = 304 = 19 blocks: a full repeat hits floor(303 / 16) * 16 = 288, never 304.
    assert cached_exactly("repeat", reply(cached=288), 288, "why").passed is True
    assert cached_exactly("repeat", reply(cached=304), 288, "why").passed is False
    assert cached_exactly("repeat", reply(cached=None), 288, "why").passed is False


def test_cached_bounds() -> None:
    assert cached_at_least("x", reply(cached=272), 272).passed is True
    assert cached_at_least("x", reply(cached=256), 272).passed is False
    assert cached_at_most("x", reply(cached=0), 0, "why").passed is True
    assert cached_at_most("x", reply(cached=16), 0, "why").passed is False
    assert cached_at_most("x", reply(cached=None), 16, "why").passed is False  # missing is not "at most"


def test_same_worker_needs_attribution_and_is_na_without() -> None:
    a, b = reply(worker="worker0"), reply(worker="worker0")
    assert same_worker("co", a, b, 2).passed is True
    assert same_worker("co", a, reply(worker="worker1"), 2).passed is False
    na = same_worker("co", a, reply(worker=None), 2)
    assert na.passed is None and "no worker attribution" in na.actual
    assert same_worker("co", a, b, 1).passed is None


def test_burst_stays_home() -> None:
    home = [reply(cached=288, tag=f"b{i}") for i in range(6)]
    assert burst_stays_home(home, "worker0", 288, 2).passed is True
    split = home[:3] + [reply(cached=0, worker="worker1", tag=f"c{i}") for i in range(3)]
    check = burst_stays_home(split, "worker0", 288, 2)
    assert check.passed is False and "3 did not hit" in check.actual
    missed = [*home[:5], reply(cached=272, tag="m")]
    assert burst_stays_home(missed, "worker0", 288, 2).passed is False


def test_burst_counts_from_metrics_when_no_reply_is_attributed() -> None:
    anon = [reply(worker=None, tag=f"a{i}") for i in range(6)]
    assert burst_spreads(anon, 2, {"worker0": 3.0, "worker1": 3.0}).passed is True
    piled = burst_spreads(anon, 2, {"worker0": 6.0, "worker1": 0.0})
    assert piled.passed is False and piled.source == "metrics"
    # No attribution at all: n/a, never the old false failure on {None: 6}.
    assert burst_spreads(anon, 2, None).passed is None
    assert burst_stays_home(anon, None, 288, 2, None).passed is None
    home = burst_stays_home(
        [reply(cached=288, worker=None, tag=f"h{i}") for i in range(6)],
        "worker0",
        288,
        2,
        {"worker0": 6.0, "worker1": 0.0},
    )
    assert home.passed is True


def test_burst_spreads_by_header() -> None:
    spread = [reply(worker=f"worker{i % 2}", tag=f"s{i}") for i in range(6)]
    assert burst_spreads(spread, 2).passed is True
    assert burst_spreads([reply(tag=f"p{i}") for i in range(6)], 2).passed is False
    assert burst_spreads(spread, 1).passed is None


def test_staircase() -> None:
    # Qwen3-VL 512x512 = 256 tokens: 1, 2, 3 images hit 0, 256, 512 (each step one image's 16 blocks).
    good = [reply(cached=c, tag=f"s{c}") for c in (0, 256, 512)]
    assert staircase(good, [0, 256, 512], 16).passed is True
    uneven = [reply(cached=c, tag=f"u{c}") for c in (0, 0, 256)]
    assert staircase(uneven, [0, 256, 512], 16).passed is False
    # Right numbers but a flat step: cannot pass even if the expectation were wrong the same way.
    flat = [reply(cached=c, tag=f"f{c}") for c in (0, 256, 256)]
    assert staircase(flat, [0, 256, 256], 16).passed is False
