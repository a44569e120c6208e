"""The multimodal routing gate: one scenario, run against any stack that follows the contracts.

Against a running stack the gate sends, in order: a first request (content must name the image's colours; a
usage block is required); an exact repeat (it must hit the cache through the image blocks, on the same worker);
the same image by the other transport (URL vs base64: it must hit too, since the hash is over the content); the
same text with a *different* last image (it must not report cached image blocks, and the router's own record of
it must not claim them); a few more distinct images (they must not all be pinned to the first worker: a router
keyed on text alone pins them). It then checks the workers' ``/metrics`` deltas agree with what responses
reported. Working routing passes every check; text-only routing and round robin each fail at least one.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from harness.checks import CheckResult
from harness.checks.prom import cache_delta, parse_metrics
from harness.checks.routing_log import records_for, startup_line
from harness.image_server import ImageServer
from harness.launch import Stack
from harness.mm.geometry import resolve_geometry
from harness.mm.hashing import DEFAULT_BLOCK_SIZE
from harness.mm.prompt import parse_chat, render_chat
from harness.payloads import (
    TestImage,
    chat_body,
    multi_image,
    multi_turn,
    response_problems,
    single_image,
    solid_png,
)
from harness.procs import tail

QUESTION = "What colour is this image? Answer in one word."
BLOCK = DEFAULT_BLOCK_SIZE


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
    def ok(self) -> bool:
        return self.status == 200 and isinstance(self.body, dict) and "choices" in self.body

    @property
    def content(self) -> str:
        try:
            return str(self.body["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            return ""

    @property
    def prompt_tokens(self) -> int:
        return int(((self.body or {}).get("usage") or {}).get("prompt_tokens", 0))

    @property
    def cached_tokens(self) -> int | None:
        details = (((self.body or {}).get("usage") or {}).get("prompt_tokens_details")) or {}
        value = details.get("cached_tokens")
        return int(value) if isinstance(value, int) else None

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


@dataclass
class GateResult:
    case_id: str
    checks: list[CheckResult] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    hit_rate: float | None = None
    per_worker: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.passed is False]

    def report(self) -> str:
        lines = [f"gate {self.case_id}: {'PASS' if self.passed else 'FAIL'}"]
        lines += ["  " + c.describe() for c in self.checks]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [
                {
                    "name": c.name,
                    "verdict": c.verdict,
                    "expected": c.expected,
                    "actual": c.actual,
                    "request_id": c.request_id,
                }
                for c in self.checks
            ],
            "requests": [r.record() for r in self.replies],
            "kv_hit_rate": self.hit_rate,
            "per_worker_requests": self.per_worker,
        }


class Gate:
    def __init__(
        self, stack: Stack, images: ImageServer, *, adapter: str | None = None, client: httpx.Client | None = None
    ) -> None:
        self.stack = stack
        self.case = stack.case
        self.model = self.case.model.model
        self.images = images
        self.adapter = adapter
        self.client = client or httpx.Client(timeout=self.case.effective.timeout_s)
        self.result = GateResult(self.case.id)
        self.geometry = resolve_geometry(self.model, family=self.case.model.family)
        self._generated: dict[str, TestImage] = {}

    # -- plumbing ---------------------------------------------------------------------------------------------
    def image(self, colour: str) -> TestImage:
        if colour not in self._generated:
            data = solid_png(colour)
            name = f"{self.case.id}-{colour}-{uuid.uuid4().hex[:8]}.png"
            self._generated[colour] = TestImage(name, colour, data, self.images.add(name, data))
        return self._generated[colour]

    def messages(self, imgs: Sequence[TestImage], inline: bool) -> list[dict[str, Any]]:
        refs = [im.ref(inline) for im in imgs]
        payload = self.case.payload
        if payload == "multi_image":
            return multi_image(refs, "What colours are these images?")
        if payload == "multi_turn":
            return multi_turn(refs[0], QUESTION, "It is a colour.", "Are you sure? Name the colour again.")
        return single_image(refs[0], QUESTION)

    def send(self, tag: str, messages: list[dict[str, Any]]) -> Reply:
        rid = f"{self.case.id}-{tag}-{uuid.uuid4().hex[:8]}"
        body = chat_body(self.adapter or self.model, messages)
        t0 = time.perf_counter()
        try:
            r = self.client.post(f"{self.stack.url}/v1/chat/completions", json=body, headers={"X-Request-Id": rid})
            status, payload, served = r.status_code, _json(r), r.headers.get("x-served-by")
        except httpx.HTTPError as exc:
            status, payload, served = 0, {"error": {"message": f"{type(exc).__name__}: {exc}"}}, None
        reply = Reply(tag, rid, status, payload, served, time.perf_counter() - t0, messages)
        self.result.replies.append(reply)
        return reply

    def check(self, name: str, passed: bool | None, expected: str, actual: str, reply: Reply | None = None) -> bool:
        logs = self.logs_for(reply) if passed is False else {}
        self.result.checks.append(
            CheckResult(name, passed, expected, actual, reply.request_id if reply else None, logs)
        )
        return bool(passed)

    def logs_for(self, reply: Reply | None) -> dict[str, str]:
        """Log lines about this request (by id) plus the tail of each component's log."""
        out = {}
        for path in [*self.stack.worker_logs(), self.stack.log_path("router")]:
            if not path.exists():
                continue
            text = path.read_text(errors="replace")
            mine = [ln for ln in text.splitlines() if reply and reply.request_id in ln][-5:]
            out[path.stem.removeprefix(self.stack.log_prefix)] = "\n".join(mine) or tail(path, 5)
        return out

    def router_text(self) -> str:
        path = self.stack.router_log
        return path.read_text(errors="replace") if path else ""

    def scrape(self) -> dict[str, dict[str, float]]:
        out = {}
        for i, url in enumerate(self.stack.worker_urls):
            try:
                out[f"worker{i}"] = parse_metrics(self.client.get(f"{url}/metrics", timeout=10).text)
            except httpx.HTTPError:
                out[f"worker{i}"] = {}
        return out

    def image_ranges(self, messages: list[dict[str, Any]], imgs: Sequence[TestImage]) -> list[tuple[int, int]]:
        """(offset, length) of each image's placeholder run, rendered locally with the shared template."""
        turns = parse_chat(messages)
        counts = [(f"img{i}", self.geometry.num_tokens(*im.size)) for i, im in enumerate(imgs)]
        prompt = render_chat(turns, self.geometry.family, counts)
        return [(it.offset, it.length) for it in prompt.mm_items]

    # -- the scenario -----------------------------------------------------------------------------------------
    def run(self) -> GateResult:
        router = self.case.effective.router
        before = self.scrape()
        self.check_startup_line(router)

        base = (
            [self.image("green"), self.image("blue")] if self.case.payload == "multi_image" else [self.image("green")]
        )
        inline = self.case.payload == "base64"
        first_msgs = self.messages(base, inline)
        first = self.send("first", first_msgs)
        if not self.check_reply(first, [im.colour for im in base]):
            return self.result
        ranges = self.image_ranges(first_msgs, base)
        last_offset, last_len = ranges[-1]
        image_blocks_end = (last_offset + last_len) // BLOCK * BLOCK

        repeat = self.send("repeat", self.messages(base, inline))
        self.check_reply(repeat, [im.colour for im in base])
        self.check_cached_at_least("repeat hits the image blocks", repeat, image_blocks_end)
        self.check_same_worker("repeat co-locates", first, repeat)

        other_transport = self.send("transport", self.messages(base, not inline))
        self.check_cached_at_least(
            f"same image by {'URL' if inline else 'base64'} hits", other_transport, image_blocks_end
        )

        swapped = [*base[:-1], self.image("red")]
        negative = self.send("negative", self.messages(swapped, inline))
        self.check_reply(negative, [im.colour for im in swapped])
        no_image_hit = last_offset // BLOCK * BLOCK
        cached = negative.cached_tokens
        self.check(
            "different image: no cached image blocks",
            cached is not None and cached <= no_image_hit,
            f"cached_tokens <= {no_image_hit} (the block holding the new image's first token must miss)",
            f"cached_tokens={cached}",
            negative,
        )
        self.check_router_record(negative, last_offset)

        spread = [negative] + [
            self.send(f"distinct{i}", self.messages([*base[:-1], self.image(c)], inline))
            for i, c in enumerate(("yellow", "magenta", "cyan"))
        ]
        self.check_free_to_move(first, spread, router)

        after = self.scrape()
        self.check_metrics(before, after)
        if self.adapter:
            self.check_adapter_loaded(first)
        return self.result

    # -- individual checks ------------------------------------------------------------------------------------
    def check_startup_line(self, router: str) -> None:
        if router == "none":
            self.check("router start-up line", None, "no router in this topology", "-")
            return
        line = startup_line(self.router_text())
        self.check(
            "MM-aware routing start-up line",
            line is not None,
            f"'MM-aware KV routing enabled model={self.model} ...' in the router log",
            f"found {line}" if line else "absent: the router does not put images in its routing key",
        )

    def check_reply(self, reply: Reply, colours: Sequence[str]) -> bool:
        problems = (
            response_problems(reply.body) if reply.status == 200 else [f"HTTP {reply.status}: {_error(reply.body)}"]
        )
        if not self.check(
            f"{reply.tag}: valid response",
            not problems,
            "HTTP 200 with choices and usage",
            "; ".join(problems) or "ok",
            reply,
        ):
            return False
        missing = [c for c in colours if c not in reply.content.lower()]
        return self.check(
            f"{reply.tag}: content names {', '.join(colours)}",
            not missing,
            f"{', '.join(colours)} in the answer",
            repr(reply.content[:120]),
            reply,
        )

    def check_cached_at_least(self, name: str, reply: Reply, threshold: int) -> None:
        cached = reply.cached_tokens
        self.check(
            name,
            cached is not None and cached >= threshold,
            f"cached_tokens >= {threshold} (every block through the image)",
            f"cached_tokens={cached} of prompt_tokens={reply.prompt_tokens} on {reply.served_by}",
            reply,
        )

    def check_same_worker(self, name: str, a: Reply, b: Reply) -> None:
        if len(self.stack.worker_urls) < 2 or not (a.served_by and b.served_by):
            self.check(name, None, "two or more workers and X-Served-By", "single worker or no header")
            return
        self.check(name, a.served_by == b.served_by, f"served by {a.served_by}", f"served by {b.served_by}", b)

    def check_router_record(self, reply: Reply, image_offset: int) -> None:
        recs = records_for(self.router_text(), reply.request_id)
        if not recs:
            router = self.case.effective.router
            passed = None if router in ("none", "vllm-router", "sglang-router") else False
            self.check(
                "router record of the different-image request",
                passed,
                "one [ROUTING] record for the request",
                "no record for this request id",
                reply,
            )
            return
        rec = recs[-1]
        allowed = image_offset // BLOCK
        ok = rec.overlap_blocks <= allowed and (rec.total_blocks == 0 or rec.overlap_blocks < rec.total_blocks)
        self.check(
            "router does not claim the new image's blocks",
            ok,
            f"overlap_blocks <= {allowed} (blocks before the image) and < total_blocks",
            f"overlap_blocks={rec.overlap_blocks} total_blocks={rec.total_blocks} worker={rec.worker}",
            reply,
        )

    def check_free_to_move(self, first: Reply, distinct: Sequence[Reply], router: str) -> None:
        """Without routing records, judge by behaviour: different images behind the same text must not all be
        pinned to the first image's worker (what a router keyed on text alone does). With records, the record
        check above already proves the router did not believe the image was cached."""
        if router == "none" or len(self.stack.worker_urls) < 2:
            self.check("different images are free to move", None, "a router and two or more workers", "-")
            return
        if any(records_for(self.router_text(), r.request_id) for r in distinct):
            self.check("different images are free to move", None, "judged from the router's records", "-")
            return
        workers = Counter(r.served_by for r in distinct)
        pinned = set(workers) == {first.served_by}
        self.check(
            "different images are free to move",
            not pinned,
            f"not every different-image request pinned to {first.served_by}",
            f"served by {dict(workers)}",
            distinct[-1],
        )

    def check_adapter_loaded(self, first: Reply) -> None:
        text = self.router_text()
        loaded = f"adapter={self.adapter} " in text and "[LORA] cold load" in text
        self.check(
            "adapter loaded on demand",
            loaded,
            f"a '[LORA] cold load ... adapter={self.adapter}' line",
            "found" if loaded else "absent",
            first,
        )

    def check_metrics(self, before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> None:
        reported = sum(r.cached_tokens or 0 for r in self.result.replies)
        hits = queries = 0.0
        for name in after:
            d = cache_delta(before.get(name, {}), after[name])
            hits += d.hits
            queries += d.queries
            self.result.per_worker[name] = 0
        self.result.per_worker = dict(Counter(r.served_by or "?" for r in self.result.replies))
        self.result.hit_rate = hits / queries if queries else None
        if not queries:
            self.check("/metrics prefix-cache deltas", None, "workers export vllm:prefix_cache_*", "no data")
            return
        self.check(
            "/metrics prefix-cache hits match responses",
            hits >= reported,
            f"vllm:prefix_cache_hits delta >= {reported} (sum of cached_tokens reported)",
            f"hits delta={hits:.0f}, queries delta={queries:.0f}, hit rate={hits / queries:.2f}",
        )


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return {"error": {"message": r.text[:300]}}


def _error(body: Any) -> str:
    try:
        return str(body["error"]["message"])[:200]
    except (KeyError, TypeError):
        return str(body)[:200]


def run_gate(stack: Stack, images: ImageServer, adapter: str | None = None) -> GateResult:
    with httpx.Client(timeout=stack.case.effective.timeout_s) as client:
        return Gate(stack, images, adapter=adapter, client=client).run()
