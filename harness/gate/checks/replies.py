"""Responses as the checks see them, and the checks that need nothing but responses."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.gate.checks import CheckResult, not_applicable


@dataclass
class Reply:
    tag: str
    request_id: str
    status: int
    body: Any
    served_by: str | None
    latency_s: float
    messages: list[dict[str, Any]] = field(repr=False, default_factory=list)
    #: Which attribution source named ``served_by`` (``header:X-Served-By``, ``nvext``, ``metrics``, ``logs``).
    attributed_by: str | None = None

    @property
    def content(self) -> str:
        try:
            return str(self.body["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            return ""

    @property
    def usage(self) -> dict[str, Any]:
        usage = (self.body or {}).get("usage") if isinstance(self.body, dict) else None
        return usage if isinstance(usage, dict) else {}

    @property
    def prompt_tokens(self) -> int:
        return int(self.usage.get("prompt_tokens", 0))

    @property
    def cached_tokens(self) -> int | None:
        """Cached prompt tokens; None when the body carries no usage block or a malformed details object.

        vLLM before the 2026 usage rework sends ``prompt_tokens_details: null`` when nothing was cached
        (``if enable_prompt_tokens_details and num_cached_tokens:`` in ``vllm/entrypoints/openai/serving_chat.py``)
        and its streamed usage chunk drops null fields (``exclude_none=True``): a usage block whose details are
        null or absent therefore means 0 cached tokens."""
        if not self.usage:
            return None
        details = self.usage.get("prompt_tokens_details")
        if details is None:
            return 0
        value = details.get("cached_tokens") if isinstance(details, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def error(self) -> str:
        try:
            return str(self.body["error"]["message"])[:200]
        except (KeyError, TypeError):
            return str(self.body)[:200]

    def record(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "request_id": self.request_id,
            "status": self.status,
            "worker": self.served_by,
            "attributed_by": self.attributed_by,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "latency_ms": round(self.latency_s * 1e3, 2),
        }


def response_problems(body: Any) -> list[str]:
    """What is wrong with a chat completion body, as the gates need it (empty list: nothing)."""
    if not isinstance(body, dict):
        return ["response is not a JSON object"]
    problems = []
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        problems.append("no choices")
    elif not isinstance((choices[0].get("message") or {}).get("content"), str):
        problems.append("choices[0].message.content is not a string")
    usage = body.get("usage")
    if not isinstance(usage, dict):
        problems.append("no usage block")
    else:
        details = usage.get("prompt_tokens_details")
        # null / absent details = 0 cached (older vLLM); only a details object without an integer count is broken.
        if details is not None and (not isinstance(details, dict) or not isinstance(details.get("cached_tokens"), int)):
            problems.append(
                "usage.prompt_tokens_details.cached_tokens is malformed (vLLM needs --enable-prompt-tokens-details)"
            )
    return problems


def valid_reply(reply: Reply) -> CheckResult:
    problems = response_problems(reply.body) if reply.status == 200 else [f"HTTP {reply.status}: {reply.error}"]
    return CheckResult(
        f"{reply.tag}: valid response",
        not problems,
        "HTTP 200 with choices and usage",
        "; ".join(problems) or "ok",
        "health",
        reply.request_id,
    )


def names_colours(reply: Reply, colours: Sequence[str]) -> CheckResult:
    missing = [c for c in colours if c not in reply.content.lower()]
    return CheckResult(
        f"{reply.tag}: content names {', '.join(colours)}",
        not missing,
        f"{', '.join(colours)} in the answer",
        repr(reply.content[:120]),
        "health",
        reply.request_id,
    )


def cached_exactly(name: str, reply: Reply, expected: int, why: str, source: str | None = None) -> CheckResult:
    """The cache reported exactly what vLLM's rules give for what this request shares with what came before."""
    cached = reply.cached_tokens
    return CheckResult(
        name,
        cached is not None and cached == expected,
        f"cached_tokens == {expected} ({why})",
        f"cached_tokens={cached} of prompt_tokens={reply.prompt_tokens} on {reply.served_by}",
        "routing",
        reply.request_id,
        source=source,
    )


def cached_at_least(name: str, reply: Reply, threshold: int, source: str | None = None) -> CheckResult:
    cached = reply.cached_tokens
    return CheckResult(
        name,
        cached is not None and cached >= threshold,
        f"cached_tokens >= {threshold} (every block through the image)",
        f"cached_tokens={cached} of prompt_tokens={reply.prompt_tokens} on {reply.served_by}",
        "routing",
        reply.request_id,
        source=source,
    )


def cached_at_most(name: str, reply: Reply, limit: int, why: str, source: str | None = None) -> CheckResult:
    cached = reply.cached_tokens
    return CheckResult(
        name,
        cached is not None and cached <= limit,
        f"cached_tokens <= {limit} ({why})",
        f"cached_tokens={cached}",
        "routing",
        reply.request_id,
        source=source,
    )


def same_worker(name: str, a: Reply, b: Reply, workers: int) -> CheckResult:
    """Two requests on one worker, by the attribution source that named both (n/a without one: never a false
    failure for a router that simply does not say)."""
    if workers < 2:
        return not_applicable(name, "a single worker: nothing to co-locate", request_id=b.request_id)
    if not (a.served_by and b.served_by):
        return not_applicable(
            name, "no worker attribution for these requests", expected="a worker named for both requests"
        )
    return CheckResult(
        name,
        a.served_by == b.served_by,
        f"served by {a.served_by}",
        f"served by {b.served_by}",
        "routing",
        b.request_id,
        source=b.attributed_by,
    )


def burst_spread(replies: Sequence[Reply], counts: dict[str, float] | None) -> tuple[dict[str, int] | None, str | None]:
    """Requests per worker in a burst: from per-request attribution when every reply has it, else from
    per-worker counter deltas (counts, not identities), else None."""
    if replies and all(r.served_by for r in replies):
        return dict(Counter(str(r.served_by) for r in replies)), replies[0].attributed_by
    if counts is not None and sum(counts.values()) >= len(replies):
        return {k: int(v) for k, v in counts.items() if v}, "metrics"
    return None, None


def burst_stays_home(
    replies: Sequence[Reply],
    home: str | None,
    expected_cached: int,
    workers: int,
    counts: dict[str, float] | None = None,
    judge_cache: bool = True,
) -> CheckResult:
    """Concurrent copies of a cached request: a cache-aware router keeps them where the cache is, even under
    load; a router that leaves images out of its key balances them away and they miss. ``judge_cache=False``
    (an engine declared blind to images, whose hits say nothing about the image) judges placement only."""
    name = "repeats stay on the cached worker under load"
    if workers < 2:
        return not_applicable(name, "a single worker")
    spread, source = burst_spread(replies, counts)
    if home is None or spread is None:
        return not_applicable(name, "no worker attribution for the burst", expected="the home worker and the burst's")
    if not judge_cache:
        return CheckResult(
            name,
            set(spread) == {home},
            f"all {len(replies)} concurrent repeats on {home} (placement only: the engine's cached_tokens ignore "
            "images, declared)",
            f"served by {spread}",
            "routing",
            replies[0].request_id if replies else None,
            source=source,
        )
    misses = [r for r in replies if r.cached_tokens != expected_cached]
    return CheckResult(
        name,
        set(spread) == {home} and not misses,
        f"all {len(replies)} concurrent repeats on {home}, each with cached_tokens == {expected_cached}",
        f"served by {spread}; {len(misses)} did not hit every block "
        f"(cached: {sorted({r.cached_tokens for r in misses}, key=str)})",
        "routing",
        (misses or list(replies))[0].request_id,
        source=source,
    )


def burst_spreads(replies: Sequence[Reply], workers: int, counts: dict[str, float] | None = None) -> CheckResult:
    """Concurrent requests with new images behind the same text: nothing is cached anywhere beyond the text before
    the image, so load must spread them; a router keyed on text alone piles them onto one worker."""
    name = "different images spread under load"
    if workers < 2:
        return not_applicable(name, "a single worker")
    spread, source = burst_spread(replies, counts)
    if spread is None:
        return not_applicable(name, "no worker attribution for the burst", expected="requests per worker")
    return CheckResult(
        name,
        len(spread) > 1,
        f"{len(replies)} concurrent new-image requests on more than one worker",
        f"served by {spread}",
        "routing",
        replies[-1].request_id if replies else None,
        source=source,
    )


def staircase(replies: Sequence[Reply], expected: Sequence[int], block_size: int) -> CheckResult:
    """1, 2, 3 identical images: each added image adds the same number of cached blocks (one image's run, give
    or take the block its boundary falls in), and each request hits exactly what the reference says."""
    name = "staircase: each added image adds the same cached blocks"
    got = [r.cached_tokens for r in replies]
    known = [g for g in got if g is not None]
    steps = [b - a for a, b in itertools.pairwise(known)] if len(known) == len(got) else []
    even = bool(steps) and max(steps) - min(steps) <= block_size and min(steps) > 0
    return CheckResult(
        name,
        list(got) == list(expected) and even,
        f"cached_tokens {list(expected)} (steps within one block of each other, each > 0)",
        f"cached_tokens {got} (steps {steps})",
        "routing",
        replies[-1].request_id if replies else None,
        source="reference",
    )
