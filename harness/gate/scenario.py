"""The multimodal routing gate: one scenario, run against any stack that follows the contracts.

Steps, in order (each a method of ``Gate``; the suite that runs it in brackets):

1. **calibrate** [pre_merge]: the oracle (``harness.gate.oracle``) from the declared family, processor settings
   and block size; its formulas against published counts; probes sent straight to a worker (``prompt_tokens``
   with and without an image, ``/tokenize`` of two chats differing in their first user text) and the worker's
   render endpoint, each *compared* with the reference; the block size every worker reports.
2. **first / repeat / transport / negative** [pre_merge]: a first request (answer names the colours); its exact
   repeat hits every block but the one holding the last prompt token, on the same worker; the same image by the
   other transport hits the same; a different last image stops the cache (and the router's record) at the block
   before it. The repeat's prompt is padded to a whole number of blocks, so vLLM's last-token rule shows. Where
   the router keeps records, the repeat's record claims every block of the reference expansion but the last
   token's, on the first's worker, and so does the other transport's (the router's own account: it holds on an
   engine declared blind to images, whose cache checks of image prompts are n/a).
3. **bursts** [pre_merge]: concurrent repeats stay on the cached worker, all hitting; concurrent new images
   spread over the workers; the repeats' records claim the cached blocks on that worker.
4. **Dynamo's multimodal router suite** [pre_merge unless noted]: a staircase of 1, 2, 3 identical images; the
   same images reversed; the same images behind a different prompt [post_merge]; only the second image differs;
   the same picture at another resolution [post_merge]; the ``uuid`` content-part field; ``cache_salt``.
5. **LoRA** [post_merge, LoRA payload]: base model versus adapter isolation; an adapter replaced under the same
   name with new weights (vLLM keys blocks by adapter name only, so the old blocks are served: the gate shows it).
   **eviction** [pre_merge, event-fed routers]: every worker clears its prefix cache, the main prompt is repeated,
   and the router must not claim the blocks the workers dropped.
6. **router** [pre_merge]: the start-up line (model and block size); router and workers agree on the block size;
   each record keys the whole prompt as the worker counted it and claims no more than the worker had cached.
7. **metrics** [pre_merge]: the workers' prefix-cache counters equal what the responses reported.
8. **evidence**: every check the topology's capabilities require came back pass or fail.

Exact cache expectations come from a reference model of each worker's cache (what the gate sent it, rendered by
the reference and compared block by block), so they need worker attribution and a stack that tokenizes like the
reference; where either is missing they are n/a with that reason. A working router passes everything. A degraded
control must fail a *routing* check (see ``checks``).
"""

from __future__ import annotations

import itertools
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import contract as c
from harness.contract import parse_lora_cold_loads, parse_mm_startup, parse_served_models
from harness.gate.attributor import Attributor
from harness.gate.checks import CheckResult, not_applicable
from harness.gate.checks import config as cfgchecks
from harness.gate.checks.prom import block_size_from_metrics, metrics_agree, parse_metrics, queries_agree
from harness.gate.checks.replies import (
    Reply,
    burst_spreads,
    burst_stays_home,
    cached_at_most,
    cached_exactly,
    names_colours,
    same_worker,
    staircase,
    valid_reply,
)
from harness.gate.checks.routing import (
    BURST_CLAIMS,
    FORGETS,
    IMAGE_BLIND,
    REPEAT_CLAIMS,
    TRANSPORT_CLAIMS,
    block_size_agrees,
    block_size_from_records,
    burst_records_claim,
    record_claims_at_least,
    record_claims_at_most,
    record_forgets_evicted,
    record_of,
    record_spares_new_image,
    router_claims_match_workers,
    router_covers_prompt,
    router_covers_reference,
    startup_line_check,
)
from harness.gate.evidence import COLOCATES, insufficient, na_summary, required_checks
from harness.gate.image_server import ImageServer
from harness.gate.oracle import (
    ANCHORS,
    Layout,
    Reference,
    RefImage,
    Threshold,
    cache_hit_cap,
    common_prefix,
    declared_mm_options,
    expected_hit,
    shared_prefix,
    text_chat,
    whole_blocks,
)
from harness.gate.payloads import (
    TestImage,
    chat_body,
    image_part,
    make_lora_adapter,
    multi_image,
    multi_turn,
    single_image,
    solid_png,
    text_part,
)
from harness.mm.images import mm_hash
from harness.stack.launch import Stack
from harness.stack.processes import tail

QUESTION = "What colour is this image? Answer in one word."
SUITE_QUESTION = "Describe these images."
BURST = 6
#: Room for the answer of requests whose content is checked; the others generate a few tokens only (the gate is
#: about prefill and the cache, and every decode step costs time on the pre_merge clock).
ANSWER_TOKENS = 32
SUITES = ("pre_merge", "post_merge")
#: Seconds to wait after each clear before the eviction step's repeat, per try: KV events travel asynchronously
#: (ZMQ), so a claim that outlives a clear is tried again after a fresh clear and a longer wait. A router that
#: never forgets claims the blocks every time; a healthy one has heard the clear long before the last try.
EVICTION_WAITS_S = (0.0, 0.2, 1.0)
#: Cache checks whose verdict rests on the engine keying image content: n/a on an engine declared not to
#: (``engine_sees_images=False``), where only the router's records and placement can judge images.
IMAGE_CONTENT_CHECKS = frozenset(
    {
        "different image: no cached image blocks",
        "same images reversed: no hit past the text before them",
        "only the second image differs: cached stops at it",
        "other uuid, same bytes: a miss",
        "same picture at another resolution: a miss",
        "staircase: each added image adds the same cached blocks",
        "same uuid, other bytes: a hit",
        "stack's image-token count (probe) matches the reference",
        "stack's render endpoint matches the reference",
    }
)


class GateBroken(Exception):
    """The stack failed in a way that says nothing about routing (errors, wrong answers): never a verdict."""


@dataclass
class GateResult:
    case_id: str
    checks: list[CheckResult] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    hit_rate: float | None = None
    per_worker: dict[str, int] = field(default_factory=dict)
    #: Every threshold the checks used: name -> value and source (reference, probe, stack render, declared).
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    required: list[str] = field(default_factory=list)
    #: Behaviour the gate shows but does not fail (vLLM's own, pinned by a check): e.g. stale LoRA blocks.
    findings: list[str] = field(default_factory=list)
    suite: str = "post_merge"

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.passed is False]

    @property
    def not_applicable(self) -> list[dict[str, str]]:
        return na_summary(self.checks)

    def failed_kinds(self) -> set[str]:
        return {c.kind for c in self.failures}

    def report(self) -> str:
        lines = [f"gate {self.case_id}: {'PASS' if self.passed else 'FAIL'}"]
        lines += ["  " + c.describe() for c in self.checks]
        return "\n".join(lines)

    def assert_verdict(self, control: bool) -> None:
        """Raise AssertionError for a routing verdict, GateBroken for anything else.

        A control (strict xfail, ``raises=AssertionError``) is rejected only by a failed routing check; a control
        that passes is an XPASS, and one broken in another way (health, config, metrics, missing evidence) is an
        error.
        """
        kinds = self.failed_kinds()
        if "health" in kinds:
            raise GateBroken(self.report())
        if control and kinds and "routing" not in kinds:
            raise GateBroken(
                "control failed only on " + ", ".join(sorted(kinds)) + " checks, not on routing:\n" + self.report()
            )
        assert self.passed, self.report()

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "suite": self.suite,
            "checks": [c.record() for c in self.checks],
            "not_applicable": self.not_applicable,
            "required": self.required,
            "thresholds": self.thresholds,
            "findings": self.findings,
            "requests": [r.record() for r in self.replies],
            "kv_hit_rate": self.hit_rate,
            "per_worker_requests": self.per_worker,
        }


def suite_of(marks: Sequence[str]) -> str:
    """pre_merge cases run the pre_merge steps only; every other case runs all of them."""
    return "pre_merge" if "pre_merge" in marks else "post_merge"


class Gate:
    def __init__(
        self,
        stack: Stack,
        images: ImageServer,
        client: httpx.Client,
        *,
        adapter: str | None = None,
        suite: str | None = None,
    ) -> None:
        self.stack = stack
        self.spec = stack.spec
        self.caps = self.spec.capabilities
        self.model = self.spec.model
        self.block = self.spec.block_size
        self.images = images
        self.adapter = adapter
        self.client = client
        self.workers = len(stack.worker_urls)
        self.suite = suite or suite_of(getattr(stack.case, "mark_names", ()))
        self.result = GateResult(self.spec.case_id, suite=self.suite)
        self.attr = Attributor(self.caps, stack.worker_logs(), self.scrape)
        self._generated: dict[str, TestImage] = {}
        self.ref: Reference | None = None
        #: Whether the stack tokenizes like the reference (text-only probe), so exact expectations hold.
        self.exact = True
        self.exact_why = ""
        #: The reference model of each worker's cache: (send order, layout) of what the gate sent it.
        self.cache_model: dict[str, list[tuple[int, Layout]]] = {}
        self.routed: list[Reply] = []
        self.named_by_response = False
        #: Requests sent in bursts: a router may count blocks still being computed by their neighbours.
        self.concurrent: set[str] = set()
        #: The reference layout of every request sent with one (for the router's records, judged against it).
        self.layouts: dict[str, Layout] = {}
        #: Tokens the engine counts per image (the image probe): the reference expansion of an image-blind
        #: engine's prompt puts the reference's image-token count in their place.
        self.engine_image_tokens: int | None = None
        #: Eviction-step requests sent before the router could have heard the clear (tried again after a wait).
        self.superseded: set[str] = set()
        #: Send order of every request (the cache model counts only what was sent before a request).
        self.seq: dict[str, int] = {}
        self._counter = itertools.count()
        self.pad = 0
        self.suite_size = (512, 512)
        self._step_suite = "pre_merge"

    # -- plumbing ---------------------------------------------------------------------------------------------
    def image(self, colour: str | tuple[int, int, int], size: tuple[int, int] = (512, 512), tag: str = "") -> TestImage:
        key = (colour if isinstance(colour, str) else "rgb-" + "-".join(map(str, colour))) + tag
        if size != (512, 512):
            key += f"-{size[0]}x{size[1]}"
        if key not in self._generated:
            data = solid_png(colour, size)
            name = f"{self.spec.case_id}-{key}-{uuid.uuid4().hex[:8]}.png"
            colour_name = colour if isinstance(colour, str) else key
            self._generated[key] = TestImage(name, colour_name, data, self.images.add(name, data), size)
        return self._generated[key]

    @staticmethod
    def rgb(seed: int) -> tuple[int, int, int]:
        return (31 * seed % 256, 7 + 53 * seed % 240, 11 * seed % 250)

    def fresh(self, n: int, seed: int, size: tuple[int, int] = (512, 512)) -> list[TestImage]:
        """``n`` new images no earlier step sent (distinct colours, so distinct bytes)."""
        return [self.image(self.rgb(seed + i), size) for i in range(n)]

    def suite_images(self, n: int, seed: int) -> list[TestImage]:
        """Images for the suite's multi-image steps, small enough that three fit the model's context (LLaVA-NeXT
        spends ~2,900 tokens on one 512x512 image)."""
        return self.fresh(n, seed, self.suite_size)

    def ref_images(self, imgs: Sequence[TestImage]) -> list[RefImage]:
        return [RefImage(mm_hash(self.model, im.data), im.size) for im in imgs]

    def messages(self, imgs: Sequence[TestImage], inline: bool, pad: int = 0) -> list[dict[str, Any]]:
        refs = [im.ref(inline) for im in imgs]
        tail_text = " a" * pad
        if self.spec.payload == "multi_image":
            return multi_image(refs, "What colours are these images?" + tail_text)
        if self.spec.payload == "multi_turn":
            return multi_turn(refs[0], QUESTION, "It is a colour.", "Are you sure? Name the colour again." + tail_text)
        return single_image(refs[0], QUESTION + tail_text)

    def suite_messages(
        self, imgs: Sequence[TestImage], text: str = SUITE_QUESTION, uuids: Sequence[str | None] | None = None
    ) -> list[dict[str, Any]]:
        inline = self.spec.payload == "base64"
        ids = list(uuids) if uuids is not None else [None] * len(imgs)
        parts = [image_part(im.ref(inline), u) for im, u in zip(imgs, ids, strict=True)]
        return [{"role": "user", "content": [*parts, text_part(text)]}]

    def layout(
        self,
        messages: list[dict[str, Any]],
        imgs: Sequence[TestImage],
        *,
        salt: str | None = None,
        model: str | None = None,
    ) -> Layout:
        assert self.ref is not None
        name = model or self.adapter or self.model
        return self.ref.layout(messages, self.ref_images(imgs), salt=salt, adapter=None if name == self.model else name)

    def send(
        self,
        tag: str,
        messages: list[dict[str, Any]],
        *,
        layout: Layout | None = None,
        url: str | None = None,
        model: str | None = None,
        extra: dict[str, Any] | None = None,
        max_tokens: int = 4,
        sequential: bool = True,
    ) -> Reply:
        """One request through the front door (or ``url``), attributed by the declared sources, and entered in
        the reference cache model of the worker that served it."""
        rid = f"{self.spec.case_id}-{tag}-{uuid.uuid4().hex[:8]}"
        self.seq[rid] = next(self._counter)
        direct = url is not None
        # Counter deltas only while no per-response source has named a worker (they cost a scrape per request).
        counters = sequential and not direct and self.attr.per_request_counters and not self.named_by_response
        before = self.scrape() if counters else None
        body = chat_body(model or self.adapter or self.model, messages, max_tokens, **(extra or {}))
        body.update(self.attr.request_fields())
        t0 = time.perf_counter()
        headers: Any = {}
        try:
            r = self.client.post(
                f"{url or self.stack.url}/v1/chat/completions", json=body, headers={"X-Request-Id": rid}
            )
            try:
                payload = r.json()
            except ValueError:
                payload = {"error": {"message": r.text[:300]}}
            status, headers = r.status_code, r.headers
        except httpx.HTTPError as exc:
            status, payload = 0, {"error": {"message": f"{type(exc).__name__}: {exc}"}}
        latency = time.perf_counter() - t0
        served, via = self.attr.from_response(headers, payload)
        if served is not None and not direct:
            self.named_by_response = True
        if served is None and direct:
            served, via = "worker0", "direct"
        if served is None and status == 200:
            name = self.attr.from_logs(rid)
            if name:
                served, via = name, "logs"
        if served is None and before is not None:
            served, _ = self.attr.from_counters(before)
            via = "metrics" if served else None
        reply = Reply(tag, rid, status, payload, served, latency, messages, via)
        self.result.replies.append(reply)
        if not direct:
            self.routed.append(reply)
        if layout is not None:
            self.layouts[rid] = layout
        if layout is not None and status == 200 and sequential:
            self.remember(reply, layout)
        return reply

    def remember(self, reply: Reply, layout: Layout) -> None:
        """Enter ``layout`` in the model of the serving worker's cache (every worker's, when nobody knows which)."""
        worker = reply.served_by
        targets = [worker] if worker else [*self.cache_model, *[f"worker{i}" for i in range(self.workers)]]
        seq = self.seq[reply.request_id]
        for name in dict.fromkeys(targets):
            self.cache_model.setdefault(name, []).append((seq, layout))

    def model_expects(self, reply: Reply, layout: Layout) -> tuple[int | None, str]:
        """The cached tokens a correct stack reports for ``reply``: the most any worker holds of ``layout`` in
        the reference model of the workers' caches (what the gate sent each before this request), so a request
        routed away from its cache fails as surely as a cache that reports the wrong thing. None, with the
        reason, where the model cannot say."""
        if not self.exact:
            return None, self.exact_why
        if layout.images and not self.caps.engine_sees_images:
            return None, IMAGE_BLIND
        seq = self.seq.get(reply.request_id, 1 << 62)
        shared = max(
            (shared_prefix(layout, prev) for entries in self.cache_model.values() for s, prev in entries if s < seq),
            default=0,
        )
        return expected_hit(shared, reply.prompt_tokens, self.block), ""

    def expect_exact(self, name: str, reply: Reply, layout: Layout, why: str) -> bool:
        expected, reason = self.model_expects(reply, layout)
        if expected is None:
            want = f"cached_tokens as the reference cache model gives ({why})"
            return self.add(not_applicable(name, reason, expected=want, request_id=reply.request_id))
        return self.add(cached_exactly(name, reply, expected, why, "reference"))

    def burst(self, tag: str, batches: Sequence[list[dict[str, Any]]], layouts: Sequence[Layout]) -> list[Reply]:
        def one(i: int) -> Reply:
            return self.send(f"{tag}{i}", batches[i], sequential=False)

        with ThreadPoolExecutor(len(batches)) as pool:
            replies = list(pool.map(one, range(len(batches))))
        self.concurrent.update(r.request_id for r in replies)
        for reply, layout in zip(replies, layouts, strict=True):
            self.layouts[reply.request_id] = layout
            if reply.status == 200:
                self.remember(reply, layout)
        return replies

    def valid(self, reply: Reply) -> bool:
        """``valid_reply``, except that an engine declared to answer no text (``engine_text=False``: Dynamo's
        mocker) may send a null ``content``."""
        check = valid_reply(reply)
        if (
            check.passed is False
            and not self.caps.engine_text
            and check.actual == ("choices[0].message.content is not a string")
        ):
            check.passed, check.actual = True, "ok (content null: the engine is declared to answer no text)"
        return self.add(check)

    def names(self, reply: Reply, colours: Sequence[str]) -> bool:
        """The answer names the colours; True (go on) when it does or when the engine answers no text."""
        if not self.caps.engine_text:
            why = "the engine is declared to answer no text"
            self.add(not_applicable(f"{reply.tag}: content names {', '.join(colours)}", why, "health"))
            return True
        return self.add(names_colours(reply, colours))

    def image_blind(self, name: str) -> CheckResult | None:
        """n/a for a cache check about image content on an engine declared not to see images."""
        if self.caps.engine_sees_images:
            return None
        return not_applicable(
            name, "the engine ignores image content (declared): its cached_tokens say nothing about images"
        )

    def add(self, check: CheckResult) -> bool:
        check.suite = self._step_suite
        if check.name in IMAGE_CONTENT_CHECKS and check.passed is not None and not self.caps.engine_sees_images:
            blind = self.image_blind(check.name)
            assert blind is not None
            blind.request_id, blind.suite, blind.kind = check.request_id, check.suite, check.kind
            check = blind
        if check.passed is False:
            check.logs = self.logs_for(check.request_id)
        self.result.checks.append(check)
        return bool(check.passed)

    def threshold(self, t: Threshold) -> int:
        self.result.thresholds[t.name] = t.record()
        return t.value

    def logs_for(self, request_id: str | None) -> dict[str, str]:
        """Log lines about this request (by id), else the tail of each component's log."""
        out = {}
        for path in [*self.stack.worker_logs(), self.stack.log_path("router")]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                mine = [ln for ln in lines if request_id and request_id in ln][-5:]
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
            except (httpx.HTTPError, ValueError):
                out[f"worker{i}"] = {}
        return out

    def post_json(self, url: str, body: dict[str, Any]) -> Any | None:
        try:
            r = self.client.post(url, json=body, timeout=30)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    # -- the router's records, judged against the reference ------------------------------------------------------
    def expanded(self, reply: Reply) -> int | None:
        """``reply``'s prompt as the reference expands it, in the stack's tokens: the engine's own count where the
        engine counts images; for an engine declared blind to images (one placeholder per image: Dynamo's
        mocker), its count with each image's placeholders (the image probe) replaced by the reference's
        image-token count. Never the router's own ``total_blocks``. None where it cannot be known."""
        if not reply.prompt_tokens:
            return None
        if self.caps.engine_sees_images:
            return reply.prompt_tokens
        layout = self.layouts.get(reply.request_id)
        if layout is None or (layout.images and self.engine_image_tokens is None):
            return None
        return reply.prompt_tokens + sum(n - (self.engine_image_tokens or 0) for _, n in layout.images)

    def home_worker(self) -> str | None:
        """The worker the router's record of the first request names."""
        rec = record_of(self.router_text(), self.first) if hasattr(self, "first") else None
        return rec.worker if rec else None

    def claims(self, name: str, reply: Reply, why: str, home: bool = False) -> CheckResult:
        """The router's record of ``reply`` claims every block of its reference expansion but the one holding the
        last prompt token (on the first request's recorded worker, with ``home``)."""
        keeps = bool(self.caps.records)
        tokens = self.expanded(reply)
        if keeps and tokens is None:
            why_na = "no reference expansion of this prompt (the image-token probe did not answer)"
            return not_applicable(name, why_na, request_id=reply.request_id)
        floor = cache_hit_cap(tokens or 0, self.block) // self.block
        self.threshold(
            Threshold(f"{reply.tag}_claimed_blocks_at_least", floor, "reference", "floor((expanded prompt - 1) / B)")
        )
        worker = self.home_worker() if home and keeps else None
        if home and keeps and worker is None:
            return CheckResult(
                name,
                False,
                "a [ROUTING] record of the first request, naming its worker",
                "no record for the first request",
                "routing",
                self.first.request_id,
                source="router log",
            )
        return record_claims_at_least(name, self.router_text(), reply, floor, keeps, why, worker)

    def salt_apart(self, reply: Reply) -> CheckResult:
        """Another salt shares no block, judged on the engine's cache; where it does, the router's record of the
        request says whether the router (which claimed them) or the engine alone (the router claimed none)
        shared blocks across salts."""
        check = cached_at_most(
            "other cache_salt shares nothing",
            reply,
            0,
            "the salt keys the first block; this is the engine's cache, the router's account is 'router keeps "
            "cache_salt apart'",
            "reference",
        )
        if check.passed is False:
            rec = record_of(self.router_text(), reply) if self.caps.records else None
            check.actual += f" on {reply.served_by or 'an unattributed worker'}"
            if rec is None:
                check.actual += " (no router record to say whether the router shared them)"
            elif rec.overlap_blocks == 0:
                check.actual += (
                    f": the router's record claims 0/{rec.total_blocks} blocks, so the engine's cache, not the "
                    "router, shares blocks across cache_salt values"
                )
            else:
                check.actual += f": the router claims {rec.overlap_blocks} blocks too (both share across salts)"
        return check

    # -- the scenario -----------------------------------------------------------------------------------------
    def run(self) -> GateResult:
        steps: list[tuple[str, Callable[[], bool | None]]] = [
            ("pre_merge", self.step_calibrate),
            ("pre_merge", self.step_core),
            ("pre_merge", self.step_bursts),
            ("pre_merge", self.step_staircase),
            ("pre_merge", self.step_image_order),
            ("pre_merge", self.step_uuid),
            ("pre_merge", self.step_cache_salt),
            ("post_merge", self.step_resolution),
            ("post_merge", self.step_lora),
            ("pre_merge", self.step_eviction),
            ("pre_merge", self.step_router),
        ]
        self.before = self.scrape()
        for suite, step in steps:
            if suite == "post_merge" and self.suite == "pre_merge":
                continue
            self._step_suite = suite
            if step() is False:  # the stack is broken (health): nothing after it means anything
                break
        self._step_suite = "pre_merge"
        self.step_metrics()
        self.step_evidence()
        return self.result

    # 1. calibration ------------------------------------------------------------------------------------------
    def step_calibrate(self) -> bool:
        worker = self.stack.worker_urls[0]
        # Probes go straight to a worker, bypassing the router under test, unless the workers' URLs serve no
        # OpenAI API (declared: Dynamo's mockers); then through the front door, and /tokenize and render are n/a.
        direct = self.caps.workers_serve_openai
        probe_url = worker if direct else None
        declared_args = self.stack.env.get(c.ENV_EXTRA_WORKER_ARGS, "") if self.stack.env else ""
        options = declared_mm_options([declared_args, *self.spec.extra_worker_args], self.spec.family)
        ref = self.ref = Reference(options.geometry(self.model), self.block)
        self.threshold(Threshold("block_size", self.block, "declared", "the topology's block_size"))
        self.add(cfgchecks.reference_anchors(ref.family))

        # Probe: the template prefix, from /tokenize of two chats that differ only in their first user text.
        ref_prefix = ref.template_prefix()
        toks = [
            self.post_json(f"{worker}/tokenize", {"model": self.model, "messages": text_chat(t)}) if direct else None
            for t in ("Alpha", "Omega")
        ]
        probed_prefix = None
        if all(isinstance(t, dict) and isinstance(t.get("tokens"), list) for t in toks):
            probed_prefix = common_prefix(toks[0]["tokens"], toks[1]["tokens"])  # type: ignore[index]
        self.add(cfgchecks.template_prefix_agrees(ref_prefix, probed_prefix))
        ref.shift = (probed_prefix - ref_prefix) if probed_prefix is not None else 0
        self.threshold(
            Threshold("template_prefix", ref_prefix + ref.shift, "probe" if probed_prefix is not None else "reference")
        )

        # Probe: the image-token count, from prompt_tokens with and without an image (straight to a worker).
        probe_img = self.image("cyan", tag="-probe")
        ref_tokens = ref.image_tokens(probe_img.size)
        self.threshold(Threshold("image_tokens_512x512", ref_tokens, "reference", ref.geometry.source))
        with_img = self.send(
            "probe-image",
            single_image(probe_img.url, "Probe."),
            url=probe_url,
            model=self.model,  # straight to a worker: the base model (an adapter loads only through the router)
            max_tokens=1,
            layout=self.layout(single_image(probe_img.url, "Probe."), [probe_img], model=self.model),
        )
        without = self.send(
            "probe-text",
            text_chat("Probe."),
            url=probe_url,
            model=self.model,
            max_tokens=1,
            layout=self.layout(text_chat("Probe."), [], model=self.model),
        )
        probed = None
        if with_img.status == 200 and without.status == 200 and with_img.prompt_tokens:
            probed = with_img.prompt_tokens - without.prompt_tokens - ref.marker_tokens
            self.engine_image_tokens = probed
        self.add(
            cfgchecks.image_tokens_agree(cfgchecks.PROBE_IMAGE, ref_tokens, probed, "prompt_tokens probe", "probe")
        )
        ref_text_tokens = self.layout(text_chat("Probe."), [], model=self.model).tokens + ref.shift
        if without.status == 200 and without.prompt_tokens != ref_text_tokens:
            self.exact = False
            self.exact_why = (
                f"the stack tokenizes text unlike the reference (text probe: {without.prompt_tokens} tokens, "
                f"reference {ref_text_tokens}): exact cache expectations need the reference tokenizer"
            )
        if without.status != 200 or with_img.status != 200:
            return self.valid(with_img if with_img.status != 200 else without)

        for side in (512, 384, 256, 128):
            self.suite_size = (side, side)
            if 3 * ref.image_tokens(self.suite_size) + 256 <= self.spec.max_model_len:
                break
        self.threshold(
            Threshold(
                "suite_image_side", self.suite_size[0], "reference", "largest side whose three images fit max_model_len"
            )
        )

        # Align the gate's main prompt to a whole number of blocks, so a full repeat shows the last-token rule.
        base = self.base_images()
        plain = self.messages(base, False)
        counted = self.post_json(f"{worker}/tokenize", {"model": self.model, "messages": plain}) if direct else None
        count = counted.get("count") if isinstance(counted, dict) else None
        n = int(count) if isinstance(count, int) else self.layout(plain, base).tokens + ref.shift
        self.pad = -n % self.block
        self.threshold(
            Threshold(
                "main_prompt_tokens",
                n + self.pad,
                "probe" if count else "reference",
                f"padded by {self.pad} tokens to a whole number of {self.block}-token blocks",
            )
        )

        # The render endpoint, where the worker has one: compared with the reference, never used in its place.
        msgs = self.messages(base, False, self.pad)
        rendered = (
            self.post_json(f"{worker}/v1/chat/completions/render", {"model": self.model, "messages": msgs})
            if direct
            else None
        )
        stack_ranges = None
        try:
            placeholders = rendered["features"]["mm_placeholders"]["image"]  # type: ignore[index]
            stack_ranges = [(int(p["offset"]), int(p["length"])) for p in placeholders]
        except (KeyError, TypeError, ValueError):
            stack_ranges = None
        self.add(cfgchecks.render_agrees(ref.offsets(self.layout(msgs, base, model=self.model)), stack_ranges))

        # The block size each worker runs: vllm:cache_config_info, else its start-up log line.
        self.worker_blocks = self.worker_block_sizes()
        self.add(cfgchecks.workers_block_size(self.block, self.worker_blocks))
        return True

    def worker_block_sizes(self) -> dict[str, tuple[int | None, str]]:
        out: dict[str, tuple[int | None, str]] = {}
        for i, url in enumerate(self.stack.worker_urls):
            value, source = None, "none"
            try:
                value = block_size_from_metrics(self.client.get(f"{url}/metrics", timeout=10).text)
                source = "vllm:cache_config_info"
            except (httpx.HTTPError, ValueError):
                value = None
            if value is None:
                # Fallback: the worker's start-up line (the simulated engine logs ``block_size=N`` when ready).
                path = self.stack.worker_logs()[i]
                text = path.read_text(errors="replace") if path.exists() else ""
                m = re.search(r"\bready:.*?\bblock_size=(\d+)", text)
                value, source = (int(m.group(1)), "worker log (no vllm:cache_config_info)") if m else (None, "none")
            out[f"worker{i}"] = (value, source)
        return out

    def base_images(self) -> list[TestImage]:
        colours = ("green", "blue") if self.spec.payload == "multi_image" else ("green",)
        return [self.image(col) for col in colours]

    # 2. first / repeat / transport / negative -----------------------------------------------------------------
    def step_core(self) -> bool:
        assert self.ref is not None
        base = self.base_images()
        colours = [im.colour for im in base]
        inline = self.spec.payload == "base64"
        msgs = self.messages(base, inline, self.pad)
        self.main = self.layout(msgs, base)
        first = self.send("first", msgs, layout=self.main, max_tokens=ANSWER_TOKENS)
        if not (self.valid(first) and self.names(first, colours)):
            return False
        self.first = first
        last_offset, last_len = self.ref.offsets(self.main)[-1]
        self.threshold(Threshold("last_image_offset", last_offset, "reference" if not self.ref.shift else "probe"))
        self.threshold(Threshold("last_image_tokens", last_len, "reference", self.ref.geometry.source))

        repeat = self.send("repeat", msgs, layout=self.main)
        self.valid(repeat)
        self.expect_exact(
            "repeat hits the image blocks", repeat, self.main, "every block but the one holding the last prompt token"
        )
        self.add(same_worker(COLOCATES, first, repeat, self.workers))
        self.add(self.claims(REPEAT_CLAIMS, repeat, "every block but the one holding the last prompt token", home=True))

        other_msgs = self.messages(base, not inline, self.pad)
        other = self.send("transport", other_msgs, layout=self.layout(other_msgs, base))
        self.valid(other)
        self.expect_exact(
            f"same image by {'URL' if inline else 'base64'} hits", other, self.main, "the hash is over the bytes"
        )
        via = "base64 after URL" if not inline else "URL after base64"
        self.add(self.claims(TRANSPORT_CLAIMS, other, f"same bytes by {via}: the image's hash is over its bytes"))

        swapped = [*base[:-1], self.image("red")]
        neg_msgs = self.messages(swapped, inline, self.pad)
        negative = self.send("negative", neg_msgs, layout=self.layout(neg_msgs, swapped), max_tokens=ANSWER_TOKENS)
        if self.valid(negative):
            self.names(negative, [*colours[:-1], "red"])
        limit = self.threshold(
            Threshold(
                "negative_cached_at_most",
                whole_blocks(last_offset, self.block),
                "reference",
                "whole blocks before the new image",
            )
        )
        self.add(
            cached_at_most(
                "different image: no cached image blocks",
                negative,
                limit,
                "the block holding the new image's first token must miss",
                "reference",
            )
        )
        self.add(
            record_spares_new_image(self.router_text(), negative, last_offset, self.block, bool(self.caps.records))
        )
        return True

    # 3. bursts ---------------------------------------------------------------------------------------------
    def step_bursts(self) -> None:
        if not (self.spec.has_router and self.workers > 1):
            return
        base = self.base_images()
        inline = self.spec.payload == "base64"
        msgs = self.messages(base, inline, self.pad)
        before = self.scrape()
        repeats = self.burst("burst-repeat", [msgs] * BURST, [self.main] * BURST)
        counts = self.attr.counts(before) if self.attr.per_request_counters else None
        full = cache_hit_cap(self.first.prompt_tokens, self.block)
        self.threshold(Threshold("burst_repeat_cached", full, "reference", "floor((prompt_tokens - 1) / B) * B"))
        self.add(
            burst_stays_home(
                repeats, self.first.served_by, full, self.workers, counts, judge_cache=self.caps.engine_sees_images
            )
        )
        tokens = self.expanded(self.first)
        if self.caps.records and tokens is None:
            self.add(not_applicable(BURST_CLAIMS, "no reference expansion of the main prompt (image probe failed)"))
        else:
            floor = cache_hit_cap(tokens or 0, self.block) // self.block
            home = self.home_worker()
            self.add(burst_records_claim(self.router_text(), repeats, floor, home, bool(self.caps.records)))

        fresh = [[*base[:-1], im] for im in self.fresh(BURST, seed=1)]
        before = self.scrape()
        spread = self.burst(
            "burst-new",
            [self.messages(imgs, inline, self.pad) for imgs in fresh],
            [self.layout(self.messages(imgs, inline, self.pad), imgs) for imgs in fresh],
        )
        counts = self.attr.counts(before) if self.attr.per_request_counters else None
        if self.adapter:  # adapter affinity deliberately keeps one adapter's requests together
            self.add(
                not_applicable(
                    "different images spread under load",
                    "adapter requests stay with the adapter's holders (--lora-spill-running)",
                    expected="requests on the base model",
                )
            )
        else:
            self.add(burst_spreads(spread, self.workers, counts))

    # 4. Dynamo's multimodal router suite --------------------------------------------------------------------
    def step_staircase(self) -> None:
        """1, 2, 3 identical images: each added image adds the same number of cached blocks."""
        (x,) = self.suite_images(1, seed=20)
        replies, expected = [], []
        for k in (1, 2, 3):
            msgs = self.suite_messages([x] * k)
            layout = self.layout(msgs, [x] * k)
            reply = self.send(f"stair{k}", msgs, layout=layout)
            if not self.valid(reply):
                return
            want, why = self.model_expects(reply, layout)
            if want is None:
                self.add(not_applicable("staircase: each added image adds the same cached blocks", why))
                return
            replies.append(reply)
            expected.append(want)
        self.add(staircase(replies, expected, self.block))

    def step_image_order(self) -> None:
        """Two images, then: reversed (no hit beyond the text before the first image), the same images behind a
        different prompt (a hit through the images, post_merge), and only the second image changed (the cache
        stops at the second image)."""
        assert self.ref is not None
        y, z, w = self.suite_images(3, seed=40)
        keeps = bool(self.caps.records)
        msgs = self.suite_messages([y, z])
        r1 = self.send("order", msgs, layout=self.layout(msgs, [y, z]))
        if not self.valid(r1):
            return
        rev = self.suite_messages([z, y])
        rev_layout = self.layout(rev, [z, y])
        r2 = self.send("reversed", rev, layout=rev_layout)
        first_off = self.ref.offsets(rev_layout)[0][0]
        self.add(
            cached_at_most(
                "same images reversed: no hit past the text before them",
                r2,
                whole_blocks(first_off, self.block),
                "blocks before the first image",
                "reference",
            )
        )
        self.add(
            record_claims_at_most(
                "router does not claim reversed images",
                self.router_text(),
                r2,
                first_off // self.block,
                keeps,
                "blocks before the first image",
            )
        )
        if self.suite != "pre_merge":
            self._step_suite = "post_merge"
            other = self.suite_messages([y, z], "Which of these is brighter? Answer briefly.")
            other_layout = self.layout(other, [y, z])
            r3 = self.send("other-prompt", other, layout=other_layout)
            self.expect_exact(
                "same images behind a different prompt hit through the images",
                r3,
                other_layout,
                "the shared images' blocks",
            )
            self._step_suite = "pre_merge"
        second = self.suite_messages([y, w])
        second_layout = self.layout(second, [y, w])
        r4 = self.send("second-differs", second, layout=second_layout)
        off_w = self.ref.offsets(second_layout)[1][0]
        self.expect_exact(
            "only the second image differs: cached stops at it",
            r4,
            second_layout,
            "every block before the second image",
        )
        self.add(
            record_claims_at_most(
                "router stops at the changed second image",
                self.router_text(),
                r4,
                off_w // self.block,
                keeps,
                "blocks before the second image",
            )
        )

    def step_uuid(self) -> None:
        """vLLM uses a content part's ``uuid`` verbatim as the image's hash: the same uuid hits even with other
        bytes, another uuid misses even with the same bytes."""
        assert self.ref is not None
        y, v = self.suite_images(2, seed=60)
        tag = uuid.uuid4().hex[:12]
        first = self.suite_messages([y], uuids=[f"gate-{tag}"])
        r1 = self.send("uuid", first, layout=self.layout(first, [y]))
        if not self.valid(r1):
            return
        same = self.suite_messages([v], uuids=[f"gate-{tag}"])
        same_layout = self.layout(same, [v])
        r2 = self.send("uuid-same", same, layout=same_layout)
        self.expect_exact("same uuid, other bytes: a hit", r2, same_layout, "the uuid is the image's hash")
        other = self.suite_messages([y], uuids=[f"gate-{tag}-other"])
        other_layout = self.layout(other, [y])
        r3 = self.send("uuid-other", other, layout=other_layout)
        off = self.ref.offsets(other_layout)[0][0]
        self.add(
            cached_at_most(
                "other uuid, same bytes: a miss",
                r3,
                whole_blocks(off, self.block),
                "blocks before the image",
                "reference",
            )
        )

    def step_cache_salt(self) -> None:
        """``cache_salt`` is keyed into the first block: the same salt hits, another salt shares nothing."""
        (y,) = self.suite_images(1, seed=80)
        salt = f"gate-salt-{uuid.uuid4().hex[:8]}"
        msgs = self.suite_messages([y])
        r1 = self.send("salt", msgs, layout=self.layout(msgs, [y], salt=salt), extra={"cache_salt": salt})
        if not self.valid(r1):
            return
        same_layout = self.layout(msgs, [y], salt=salt)
        r2 = self.send("salt-same", msgs, layout=same_layout, extra={"cache_salt": salt})
        self.expect_exact("same cache_salt hits", r2, same_layout, "same salt, same prompt")
        other_layout = self.layout(msgs, [y], salt=salt + "-other")
        r3 = self.send("salt-other", msgs, layout=other_layout, extra={"cache_salt": salt + "-other"})
        self.add(self.salt_apart(r3))
        self.add(
            record_claims_at_most(
                "router keeps cache_salt apart",
                self.router_text(),
                r3,
                0,
                bool(self.caps.records),
                "the salt keys the first block",
            )
        )

    def step_resolution(self) -> None:
        """The same picture at another resolution has other bytes: a miss past the text before it."""
        assert self.ref is not None
        (y,) = self.suite_images(1, seed=90)
        small = self.image(self.rgb(90), size=(self.suite_size[0] // 2, self.suite_size[1] // 2))
        msgs = self.suite_messages([y])
        r1 = self.send("resolution", msgs, layout=self.layout(msgs, [y]))
        if not self.valid(r1):
            return
        low = self.suite_messages([small])
        low_layout = self.layout(low, [small])
        r2 = self.send("resolution-low", low, layout=low_layout)
        off = self.ref.offsets(low_layout)[0][0]
        self.add(
            cached_at_most(
                "same picture at another resolution: a miss",
                r2,
                whole_blocks(off, self.block),
                "blocks before the image",
                "reference",
            )
        )
        self.add(
            record_claims_at_most(
                "router keeps resolutions apart",
                self.router_text(),
                r2,
                off // self.block,
                bool(self.caps.records),
                "blocks before the image",
            )
        )

    # 5. LoRA -------------------------------------------------------------------------------------------------
    def step_lora(self) -> None:
        if not self.adapter or not hasattr(self, "first"):
            return
        assert self.ref is not None
        base = self.base_images()
        inline = self.spec.payload == "base64"
        msgs = self.messages(base, inline, self.pad)
        self.add(self.adapter_loaded(self.first))
        base_layout = self.layout(msgs, base, model=self.model)
        r = self.send("lora-base", msgs, model=self.model, layout=base_layout)
        if not self.valid(r):
            return
        self.add(
            cached_at_most(
                "base model does not hit the adapter's blocks",
                r,
                0,
                "the adapter's name is keyed into every block",
                "reference",
            )
        )
        self.add(
            record_claims_at_most(
                "router keeps base and adapter apart",
                self.router_text(),
                r,
                0,
                bool(self.caps.records),
                "the adapter is keyed into every block",
            )
        )
        adapter_dir = (self.stack.env or {}).get(c.ENV_ADAPTER_DIR)
        name = "adapter replaced under the same name: no stale blocks"
        if not adapter_dir or os.environ.get("HARNESS_LORA_DIR"):
            why = "the adapters are the user's (HARNESS_LORA_DIR): the gate does not rewrite them"
            self.add(not_applicable(name, why))
            return
        # Same name and path, new weights. vLLM keys cached blocks by the adapter's name only
        # (``_gen_lora_extra_hash_keys`` in ``vllm/v1/core/kv_cache_utils.py``; vllm#42125), so a stack that loads
        # the new weights under the old name serves blocks computed with the old ones: wrong answers, no error.
        # A router can avoid it (load each version under its own name); the gate shows which the stack does.
        make_lora_adapter(Path(adapter_dir), self.adapter, self.model, seed=7)
        again = self.send("lora-replaced", msgs, layout=self.layout(msgs, base, model=f"{self.adapter}@replaced"))
        if not self.valid(again):
            return
        self.add(
            cached_at_most(name, again, 0, "no block computed with the old weights may serve the new ones", "reference")
        )
        if again.cached_tokens:
            self.result.findings.append(
                f"adapter {self.adapter} replaced under the same name with new weights: served "
                f"{again.cached_tokens} cached tokens computed with the old weights (vLLM keys cached blocks by "
                "adapter name only, vllm#42125)"
            )

    # 5b. eviction --------------------------------------------------------------------------------------------
    def step_eviction(self) -> None:
        """Every worker clears its prefix cache (``POST /reset_prefix_cache``, which vLLM serves in dev mode and
        which publishes AllBlocksCleared), then the main prompt is repeated: an event-fed router may claim only
        what the chosen worker then served from its cache. Last of the cache steps: the reference cache model is
        emptied with the workers' caches."""
        if not self.spec.has_router or not hasattr(self, "first"):
            return
        keeps, fed = bool(self.caps.records), self.caps.kv_events
        if not (keeps and fed):
            na = record_forgets_evicted("", self.first, self.block, keeps, fed)  # n/a, with the reason
            na.request_id = None  # about the router, not about a request
            self.add(na)
            return
        if not self.caps.workers_serve_openai:
            why = "the workers' URLs serve no API to clear their caches with (declared)"
            self.add(not_applicable(FORGETS, why))
            return
        msgs = self.messages(self.base_images(), self.spec.payload == "base64", self.pad)
        check: CheckResult | None = None
        for attempt, wait_s in enumerate(EVICTION_WAITS_S, 1):
            refused = [url for url in self.stack.worker_urls if not self.clear_cache(url)]
            if refused:
                why = (
                    f"POST /reset_prefix_cache refused by {', '.join(refused)} (vLLM serves it with "
                    "VLLM_SERVER_DEV_MODE=1, and refuses while requests run)"
                )
                self.add(not_applicable(FORGETS, why))
                return
            self.cache_model.clear()  # every worker's cache is empty now
            time.sleep(wait_s)
            reply = self.send(f"evicted{attempt}", msgs, layout=self.main)
            if not self.valid(reply):
                return
            check = record_forgets_evicted(self.router_text(), reply, self.block, keeps, fed)
            if check.passed is not False:
                break
            if attempt < len(EVICTION_WAITS_S):
                self.superseded.add(reply.request_id)
        assert check is not None
        check.actual += f" (try {attempt} of {len(EVICTION_WAITS_S)})"
        self.add(check)

    def clear_cache(self, worker_url: str) -> bool:
        """``POST /reset_prefix_cache`` on one worker: vLLM answers 200 with no body, the simulated engine
        ``{"success": bool}`` (False while a block is in use, as vLLM's ``reset_prefix_cache`` refuses)."""
        try:
            r = self.client.post(f"{worker_url}/reset_prefix_cache", timeout=30)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
        try:
            body = r.json()
        except ValueError:
            return True
        return not (isinstance(body, dict) and body.get("success") is False)

    def adapter_loaded(self, first: Reply) -> CheckResult:
        loaded = any(cl.adapter == self.adapter for cl in parse_lora_cold_loads(self.router_text()))
        return CheckResult(
            "adapter loaded on demand",
            loaded,
            f"a '[LORA] cold load ... adapter={self.adapter}' line",
            "found" if loaded else "absent",
            "config",
            first.request_id,
        )

    # 6. the router's own account ------------------------------------------------------------------------------
    def step_router(self) -> None:
        if not self.spec.has_router:
            return
        text = self.router_text()
        keeps = bool(self.caps.records)
        launch_log = self.stack.log_path("launch")
        served = parse_served_models(launch_log.read_text(errors="replace") if launch_log.exists() else "")
        self.add(startup_line_check(text, self.model, self.block, self.caps.startup_line, served))
        line = parse_mm_startup(text)
        router_block = line.block_size if line else None
        if router_block is None and keeps:  # no stated block size: the records of text-only requests tell it
            text_only = [r for r in self.routed if (lay := self.layouts.get(r.request_id)) and not lay.images]
            if not text_only:  # the probes went straight to the workers: one text-only request through the router
                msgs = text_chat("Count the blocks of this text. " * 4)
                text_only = [self.send("block-probe", msgs, layout=self.layout(msgs, []), max_tokens=1)]
                text = self.router_text()
            self.add(block_size_from_records(text, text_only, self.block, keeps))
        else:
            self.add(block_size_agrees(router_block, getattr(self, "worker_blocks", {}), self.caps.startup_line))
        sees = self.caps.engine_sees_images
        self.add(router_covers_prompt(text, self.routed, router_block or self.block, keeps, sees))
        if not sees:
            expanded = [(r, self.expanded(r)) for r in self.routed]
            self.add(router_covers_reference(text, expanded, router_block or self.block, keeps))
        # Sequential requests only: within a burst a router rightly predicts blocks its neighbours are still
        # computing, which vLLM does not share until they are cached.
        # Nor eviction-step tries sent before the router could hear the clear (the last try is judged).
        sequential = [r for r in self.routed if r.request_id not in self.concurrent | self.superseded]
        self.add(router_claims_match_workers(text, sequential, router_block or self.block, keeps, sees))

    # 7. metrics and 8. evidence -------------------------------------------------------------------------------
    def step_metrics(self) -> None:
        after = self.scrape()
        ok = [r for r in self.result.replies if r.status == 200]
        check, delta = metrics_agree(self.before, after, sum(r.cached_tokens or 0 for r in ok))
        queries = queries_agree(self.before, after, sum(r.prompt_tokens for r in ok))
        if not self.caps.worker_metrics:  # declared: nothing to compare, whatever the scrape held
            why = "the workers are declared to export no vllm:prefix_cache_* counters (worker_metrics=False)"
            check, queries = (not_applicable(x.name, why, "metrics") for x in (check, queries))
        self.add(check)
        self.add(queries)
        self.result.hit_rate = delta.hit_rate if delta.queries else None
        self.result.per_worker = dict(Counter(r.served_by or "?" for r in self.routed))

    def step_evidence(self) -> None:
        family = self.ref.family.name if self.ref else ""
        required = required_checks(
            self.caps,
            workers=self.workers,
            has_router=self.spec.has_router,
            adapter=bool(self.adapter),
            family_anchored=family in ANCHORS,
        )
        self.result.required = sorted(required)
        if self.result.failed_kinds() & {"health"}:
            return  # a broken stack produces no evidence worth counting
        for check in insufficient(self.result.checks, required):
            self.add(check)


def run_gate(stack: Stack, images: ImageServer, suite: str | None = None) -> GateResult:
    with httpx.Client(timeout=stack.spec.timeout_s) as client:
        return Gate(stack, images, client, adapter=stack.spec.adapter, suite=suite).run()
