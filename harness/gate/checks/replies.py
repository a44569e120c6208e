"""Responses as the checks see them, and the checks that need nothing but responses."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.gate.checks import CheckResult


@dataclass
class Reply:
    tag: str
    request_id: str
    status: int
    body: Any
    served_by: str | None
    latency_s: float
    messages: list[dict[str, Any]] = field(repr=False, default_factory=list)

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


def cached_at_least(name: str, reply: Reply, threshold: int) -> CheckResult:
    cached = reply.cached_tokens
    return CheckResult(
        name,
        cached is not None and cached >= threshold,
        f"cached_tokens >= {threshold} (every block through the image)",
        f"cached_tokens={cached} of prompt_tokens={reply.prompt_tokens} on {reply.served_by}",
        "routing",
        reply.request_id,
    )


def cached_at_most(name: str, reply: Reply, limit: int, why: str) -> CheckResult:
    cached = reply.cached_tokens
    return CheckResult(
        name,
        cached is not None and cached <= limit,
        f"cached_tokens <= {limit} ({why})",
        f"cached_tokens={cached}",
        "routing",
        reply.request_id,
    )


def same_worker(name: str, a: Reply, b: Reply, workers: int) -> CheckResult:
    if workers < 2 or not (a.served_by and b.served_by):
        return CheckResult(name, None, "two or more workers and X-Served-By", "single worker or no header")
    return CheckResult(
        name,
        a.served_by == b.served_by,
        f"served by {a.served_by}",
        f"served by {b.served_by}",
        "routing",
        b.request_id,
    )


def burst_stays_home(replies: Sequence[Reply], home: str | None, threshold: int, workers: int) -> CheckResult:
    """Concurrent copies of a cached request: a cache-aware router keeps them where the cache is, even under
    load; a router that leaves images out of its key balances them away and they miss."""
    name = "repeats stay on the cached worker under load"
    if workers < 2 or home is None:
        return CheckResult(name, None, "two or more workers and X-Served-By", "-")
    spread = Counter(r.served_by for r in replies)
    misses = [r for r in replies if (r.cached_tokens or 0) < threshold]
    return CheckResult(
        name,
        set(spread) == {home} and not misses,
        f"all {len(replies)} concurrent repeats on {home}, each with cached_tokens >= {threshold}",
        f"served by {dict(spread)}; {len(misses)} missed the cache",
        "routing",
        (misses or replies)[0].request_id,
    )


def burst_spreads(replies: Sequence[Reply], workers: int) -> CheckResult:
    """Concurrent requests with new images behind the same text: nothing is cached anywhere beyond the text before
    the image, so load must spread them; a router keyed on text alone piles them onto one worker."""
    name = "different images spread under load"
    if workers < 2:
        return CheckResult(name, None, "two or more workers", "-")
    spread = Counter(r.served_by for r in replies)
    return CheckResult(
        name,
        len(spread) > 1,
        f"{len(replies)} concurrent new-image requests on more than one worker",
        f"served by {dict(spread)}",
        "routing",
        replies[-1].request_id if replies else None,
    )
