"""A scripted stack for the gate's scenario: an ``httpx.MockTransport`` answering as a router in front of
workers, in-process, with no sockets.

The workers keep a prefix cache built from ``harness.mm`` (the same template, image-token formulas and block
hashes as the simulated engine) and follow vLLM's rules unless told otherwise; the router routes by the overlap
of its own key and logs ``[ROUTING]`` records and the start-up line to a log file. Knobs break one thing at a
time, so a unit test can show that the check meant to catch it does.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from harness.contract import format_mm_startup, format_routing, format_served_model
from harness.mm.geometry import ImageGeometry, resolve_geometry
from harness.mm.hashing import BlockKeyContext, block_hashes
from harness.mm.images import mm_hash
from harness.mm.prompt import ImagePart, Prompt, parse_chat, render_chat
from harness.profiles import Case, ModelProfile, RouterCapabilities, Topology
from harness.sim.answers import describe_images, dominant_colours
from harness.stack.spec import StackSpec, resolve_spec

MODEL = "Qwen/Qwen3-VL-2B-Instruct"
ROUTER = "http://router.test"


@dataclass
class Knobs:
    """What the scripted stack gets wrong (all False/None: a correct stack)."""

    router: str = "kv_mm"  # kv_mm | text_key | round_robin | first_image_only
    #: Workers serve the block holding the last prompt token from the cache (vLLM never does).
    no_last_token_rule: bool = False
    #: Tokens the workers add to every image's count (their own geometry fault).
    worker_image_bonus: int = 0
    #: The block size the router hashes with and declares (None: the workers').
    router_block: int | None = None
    #: Responses report cached tokens other than the cache's (the counters keep the truth).
    misreport: int = 0
    send_served_by: bool = True
    keep_records: bool = True
    startup_line: bool = True
    render_endpoint: bool = True
    #: Replies carry ``content: null`` (Dynamo's mocker answers token ids no tokenizer decodes).
    null_content: bool = False
    #: The workers' URLs answer only ``/metrics`` (Dynamo's mockers' system ports).
    workers_metrics_only: bool = False
    #: The router's index ignores the workers' cache clears (AllBlocksCleared): it never forgets.
    never_forgets: bool = False
    #: Events reach the router only after this many more requests (a lagging feed), as the retries must absorb.
    event_lag: int = 0
    #: The workers serve ``POST /reset_prefix_cache`` (vLLM: only with VLLM_SERVER_DEV_MODE=1).
    reset_endpoint: bool = True
    #: The workers ignore image content as Dynamo's mocker does: one placeholder token per image, no image key.
    blind_engine: bool = False
    #: The workers' cache ignores ``cache_salt`` (the mocker, as Dynamo's frontend feeds it).
    salt_blind_engine: bool = False
    #: The router logs Dynamo 1.6.1's record format (``total_blocks`` counts the partial last block).
    dynamo_records: bool = False
    #: Tokens the router adds to every image's count (its own geometry, unlike the model's).
    router_image_bonus: int = 0
    #: The router keys an image by its URL string (Dynamo's default), not its bytes.
    url_hash: bool = False
    #: What the start-up line names, whether it states the block size, and the model path the launch script
    #: announces (``HARNESS_SERVED_MODEL``).
    startup_model: str = MODEL
    startup_block: bool = True
    served_path: str | None = None
    #: The workers' /metrics carry vLLM's prefix-cache counters (a mocker's do not).
    vllm_metrics: bool = True


class FakeImages:
    """Stands in for ``ImageServer``: ``add`` keeps the bytes and hands out a URL the fake stack resolves."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return f"http://images.test/{name}"


@dataclass
class FakeWorker:
    name: str
    block: int
    cached: set[int] = field(default_factory=set)
    queries: int = 0
    hits: int = 0
    requests: int = 0


class FakeStack:
    """The transport handler plus the attributes the gate reads from a ``Stack``."""

    def __init__(self, tmp: Path, knobs: Knobs | None = None, workers: int = 2, block: int = 16) -> None:
        self.knobs = knobs or Knobs()
        self.block = block
        self.images = FakeImages()
        self.geometry: ImageGeometry = resolve_geometry(MODEL, family="qwen3_vl")
        self.pool = [FakeWorker(f"worker{i}", block) for i in range(workers)]
        self.router_index: list[set[int]] = [set() for _ in range(workers)]
        self.rr = 0
        #: Worker clears the router has yet to hear of: (requests still to route before it does, worker index).
        self.pending_clears: list[list[int]] = []
        self.lock = threading.Lock()
        self.log_dir = tmp
        self.log_prefix = "fake."
        self.worker_urls = [f"http://w{i}.test" for i in range(workers)]
        self.url = ROUTER
        for i in range(workers):
            self.log_path(f"worker{i}").write_text(f"worker worker{i} ready: block_size={block}\n")
        rb = self.knobs.router_block or block
        model = self.knobs.startup_model
        line = format_mm_startup(model, rb) if self.knobs.startup_block else (
            f"MM-aware KV routing enabled model={model} model_dir=/cache/mdc/{model}"
        )
        lines = [line] if self.knobs.startup_line else []
        self.log_path("router").write_text("\n".join(lines) + "\n")
        served = [format_served_model(self.knobs.served_path)] if self.knobs.served_path else []
        self.log_path("launch").write_text("\n".join([*served, "HARNESS_READY url=" + ROUTER]) + "\n")
        caps = RouterCapabilities(records="harness", startup_line=True, kv_events=True)
        topo = Topology(
            "fake",
            "agg_router.sh",
            marks=("pre_merge",),
            workers=workers,
            router="proxy",
            policy="kv_mm",
            block_size=block,
            capabilities=caps,
        )
        self.case = Case(ModelProfile(MODEL, "qwen3-vl-2b", family="qwen3_vl"), topo)
        self.spec: StackSpec = resolve_spec(self.case)
        self.env: dict[str, str] = {}

    # -- what the gate reads from a Stack ------------------------------------------------------------------
    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{self.log_prefix}{component}.log"

    @property
    def router_log(self) -> Path:
        return self.log_path("router")

    def worker_logs(self) -> list[Path]:
        return [self.log_path(f"worker{i}") for i in range(len(self.pool))]

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle), timeout=10)

    # -- rendering as the engine does ---------------------------------------------------------------------
    def image_bytes(self, url: str) -> bytes:
        if url.startswith("data:"):
            return base64.b64decode(url.partition(",")[2])
        return self.images.files[url.rsplit("/", 1)[-1]]

    def render(self, body: dict[str, Any], router: bool = False) -> tuple[Prompt, list[bytes], list[str]]:
        """The prompt as a worker renders it (or, with ``router``, as the router keys it)."""
        turns = parse_chat(body["messages"])
        parts = [p for t in turns for p in t.parts if isinstance(p, ImagePart)]
        datas = [self.image_bytes(p.url) for p in parts]
        counts = []
        for p, data in zip(parts, datas, strict=True):
            w, h = Image.open(io.BytesIO(data)).size
            if router:
                key = p.url if self.knobs.url_hash else (p.uuid or mm_hash(MODEL, data))
                counts.append((key, self.geometry.num_tokens(w, h) + self.knobs.router_image_bonus))
            elif self.knobs.blind_engine:
                counts.append(("blind", 1))  # the mocker: one placeholder, the pixels never looked at
            else:
                counts.append(
                    (p.uuid or mm_hash(MODEL, data), self.geometry.num_tokens(w, h) + self.knobs.worker_image_bonus)
                )
        return render_chat(turns, self.geometry.family, counts), datas, [p.url for p in parts]

    def ctx(self, body: dict[str, Any], router: bool = False) -> BlockKeyContext:
        salt_blind = self.knobs.salt_blind_engine and not router
        return BlockKeyContext(cache_salt=None if salt_blind else body.get("cache_salt"))

    # -- the transport --------------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        body = json.loads(request.content) if request.content else {}
        with self.lock:
            if host == "router.test" and path == "/v1/chat/completions":
                return self.route(request, body)
            i = int(host[1:].split(".")[0])
            if path == "/metrics":
                return httpx.Response(200, text=self.metrics(i))
            if self.knobs.workers_metrics_only:
                return httpx.Response(404, text="not found")
            if path == "/reset_prefix_cache" and self.knobs.reset_endpoint:
                return self.reset(i)
            if path == "/tokenize":
                prompt = self.render(body)[0]
                return httpx.Response(200, json={"count": prompt.num_tokens, "tokens": prompt.token_ids})
            if path == "/v1/chat/completions/render":
                if not self.knobs.render_endpoint:
                    return httpx.Response(404, json={"error": {"message": "not found"}})
                prompt = self.render(body)[0]
                ph = [{"offset": it.offset, "length": it.length} for it in prompt.mm_items]
                return httpx.Response(200, json={"features": {"mm_placeholders": {"image": ph}}})
            if path == "/v1/chat/completions":
                return self.serve(i, body, request.headers.get("x-request-id", "-"))
        return httpx.Response(404, json={"error": {"message": f"no route {path}"}})

    def reset(self, i: int) -> httpx.Response:
        """The simulated engine's ``/reset_prefix_cache``: the cache empties and an AllBlocksCleared event
        goes out to the router (heard after ``event_lag`` more requests; never by a router that never forgets)."""
        self.pool[i].cached.clear()
        if not self.knobs.never_forgets:
            self.pending_clears.append([self.knobs.event_lag, i])
        return httpx.Response(200, json={"success": True})

    def hear_events(self) -> None:
        for clear in list(self.pending_clears):
            if clear[0] <= 0:
                self.router_index[clear[1]].clear()
                self.pending_clears.remove(clear)
            else:
                clear[0] -= 1

    def route(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        rid = request.headers.get("x-request-id", "-")
        self.hear_events()
        prompt, _, _ = self.render(body, router=True)
        items = list(prompt.mm_items)
        if self.knobs.router == "text_key":
            items = [replace(it, hash="any") for it in items]
        elif self.knobs.router == "first_image_only":
            items = [it if n == 0 else replace(it, hash="any") for n, it in enumerate(items)]
        rb = self.knobs.router_block or self.block
        hashes = block_hashes(prompt.token_ids, rb, items, self.ctx(body, router=True))
        overlaps = []
        for idx in self.router_index if self.knobs.router != "no_match" else []:
            n = 0
            for h in hashes:
                if h not in idx:
                    break
                n += 1
            overlaps.append(n)
        if self.knobs.router == "no_match":  # Dynamo with KV events: its hashes never match the mockers' events
            overlaps = [0] * len(self.pool)
        if self.knobs.router == "round_robin":
            pick = self.rr % len(self.pool)
            self.rr += 1
        else:
            best = max(overlaps)  # ties rotate, as the proxy's do, so new content spreads
            ties = [i for i, o in enumerate(overlaps) if o == best]
            pick = ties[self.rr % len(ties)]
            self.rr += 1
        self.router_index[pick].update(hashes)
        if self.knobs.keep_records and self.knobs.dynamo_records:
            total = -(-prompt.num_tokens // rb)  # Dynamo counts the partial last block
            with self.router_log.open("a") as fh:
                fh.write(dynamo_record(rid, 7000 + pick, overlaps[pick], total) + "\n")
        elif self.knobs.keep_records:
            with self.router_log.open("a") as fh:
                fh.write(
                    format_routing(rid, self.pool[pick].name, overlaps[pick], len(hashes), self.knobs.router) + "\n"
                )
        return self.serve(pick, body, rid)

    def serve(self, i: int, body: dict[str, Any], rid: str) -> httpx.Response:
        w = self.pool[i]
        prompt, datas, _ = self.render(body)
        hashes = block_hashes(prompt.token_ids, w.block, prompt.mm_items, self.ctx(body))
        limit = len(hashes) if self.knobs.no_last_token_rule else (prompt.num_tokens - 1) // w.block
        hit = 0
        for h in hashes[:limit]:
            if h not in w.cached:
                break
            hit += 1
        cached = hit * w.block
        w.cached.update(hashes)
        w.queries += prompt.num_tokens
        w.hits += cached
        w.requests += 1
        text = describe_images([dominant_colours(d) for d in datas]) if datas else "ok"
        usage = {
            "prompt_tokens": prompt.num_tokens,
            "completion_tokens": 4,
            "total_tokens": prompt.num_tokens + 4,
            "prompt_tokens_details": {"cached_tokens": cached + self.knobs.misreport},
        }
        payload = {
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }
        headers = {"X-Served-By": w.name} if self.knobs.send_served_by else {}
        with self.log_path(w.name).open("a") as fh:
            fh.write(f"request_id={rid} POST /v1/chat/completions status=200\n")
        return httpx.Response(200, json=payload, headers=headers)

    def metrics(self, i: int) -> str:
        w = self.pool[i]
        if not self.knobs.vllm_metrics:  # a mocker's system port: Dynamo's own series only
            return f'dynamo_component_requests_total{{worker_id="{7000 + i:x}"}} {w.requests}\n'
        labels = 'model_name="m",engine="0"'
        return (
            f"# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{{{labels}}} {w.queries}\n"
            f"# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{{{labels}}} {w.hits}\n"
            f"# TYPE vllm:request_success counter\n"
            f'vllm:request_success_total{{{labels},finished_reason="stop"}} {w.requests}\n'
            f"# TYPE vllm:cache_config_info gauge\n"
            f'vllm:cache_config_info{{block_size="{w.block}",enable_prefix_caching="True"}} 1.0\n'
        )


def dynamo_record(rid: str, worker_id: int, overlap: int, total: int) -> str:
    """A record line as Dynamo 1.6.1's frontend logs it (from a real ``DYN_LOG=debug`` run, ids shortened)."""
    return (
        "2026-12-02T07:38:36.178983Z DEBUG http-request:kv_router.select_worker: "
        f"dynamo_llm::kv_router::routing_host::kv_selection: [ROUTING] Best: worker_{worker_id} dp_rank=0 with "
        f"{overlap}/{total} blocks overlap request_id=df0dd55e worker_id={worker_id} dp_rank=0 "
        f"overlap_blocks={overlap} total_blocks={total} method=POST uri=/v1/chat/completions version=HTTP/1.1 "
        f'x_request_id="{rid}" request_id=cb87e676 model="{MODEL}"'
    )
