"""Command line of the proxy: ``python -m harness.proxy --model NAME --workers URL [URL ...] --port P``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.mm.hashing import DEFAULT_BLOCK_SIZE
from harness.mm.options import MMOptions, add_mm_arguments, pop_mm_options
from harness.proxy.degrade import parse_modes
from harness.proxy.policies import POLICIES


@dataclass
class ProxyConfig:
    model: str
    workers: list[str]
    port: int
    host: str = "127.0.0.1"
    policy: str = "kv_mm"
    block_size: int = DEFAULT_BLOCK_SIZE
    # Cost weights
    overlap_weight: float = 1.0
    prefill_load_weight: float = 0.5
    running_weight: float = 16.0
    image_weight: float = 2.0
    cache_balance: float = 0.1
    # KV index
    #: Per worker. 32k blocks of 16 tokens is ~512k tokens, more than most workers' KV caches hold; the index
    #: costs ~150 bytes a block, so the proxy's memory is bounded at ~5 MiB per worker.
    index_capacity_blocks: int = 32_768
    index_ttl_s: float = 600.0
    kv_events: dict[str, str] = field(default_factory=dict)
    event_prediction_ttl_s: float = 5.0
    #: Geometry, image limits and sources: the same flags as the workers', read by the same code.
    mm: MMOptions = field(default_factory=MMOptions)
    inline_assets: bool = False
    asset_max_age_s: float = 3600.0
    asset_sweep_interval_s: float = 60.0
    # LoRA
    adapter_dir: Path | None = None
    adapter_registry: dict[str, dict] = field(default_factory=dict)
    max_lora_rank: int = 64
    max_loras_per_worker: int = 4
    lora_spill_running: int = 32
    adapter_load_timeout_s: float = 60.0
    # Workers and faults
    health_interval_s: float = 1.0
    health_timeout_s: float = 2.0
    connect_timeout_s: float = 2.0
    request_timeout_s: float = 600.0
    max_attempts: int = 3
    #: Consecutive failed health checks before a worker is down (its index and adapter map wiped).
    health_failures: int = 3
    #: Consecutive failed requests (5xx, timeouts) that take a worker out of rotation; one connection failure
    #: does at once. A passing health check after the cool-down lets it back in.
    breaker_failures: int = 3
    breaker_cooldown_s: float = 5.0
    seed: int | None = None
    #: TEST-ONLY degradations of the routing key (``harness.proxy.degrade``); empty in any real deployment.
    degrade: frozenset[str] = frozenset()
    log_level: str = "info"
    disable_log_requests: bool = False


def _kv_events(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        url, sep, endpoint = item.partition("=")
        if not sep or not url or not endpoint.startswith("tcp://"):
            raise argparse.ArgumentTypeError(f"--kv-events expects WORKER_URL=tcp://HOST:PORT, got {item!r}")
        out[url.rstrip("/")] = endpoint
    return out


def _json_object(flag: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SystemExit(f"{flag}: expected a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = ProxyConfig(model="", workers=[], port=0)
    p = argparse.ArgumentParser(prog="python -m harness.proxy", description="Multimodal-aware KV routing proxy.")
    p.add_argument("--model", required=True, help="served base model name (as the workers serve it)")
    p.add_argument("--workers", nargs="+", required=True, metavar="URL")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default=d.host)
    p.add_argument("--policy", choices=POLICIES, default=d.policy)
    p.add_argument("--block-size", type=int, default=d.block_size, help="the workers' KV block size")
    w = p.add_argument_group("cost weights (kv policies)")
    w.add_argument(
        "--overlap-weight",
        type=float,
        default=d.overlap_weight,
        help="cost per token-equivalent of work the request adds to the worker (prefill, encoder)",
    )
    w.add_argument(
        "--prefill-load-weight",
        type=float,
        default=d.prefill_load_weight,
        help="cost per token-equivalent of prefill work in flight on the worker (0.5: half a batched step)",
    )
    w.add_argument(
        "--running-weight",
        type=float,
        default=d.running_weight,
        help="cost per running request on the worker, in tokens",
    )
    w.add_argument(
        "--image-weight",
        type=float,
        default=d.image_weight,
        help="extra work per image token of an image the worker has not seen (its vision-encoder pass)",
    )
    w.add_argument(
        "--cache-balance",
        type=float,
        default=d.cache_balance,
        help="fraction of the prompt's tokens charged to the worker caching the most (spreads new content)",
    )
    k = p.add_argument_group("KV index")
    k.add_argument("--index-capacity-blocks", type=int, default=d.index_capacity_blocks)
    k.add_argument("--index-ttl", dest="index_ttl_s", type=float, default=d.index_ttl_s)
    k.add_argument(
        "--kv-events",
        nargs="+",
        default=[],
        metavar="URL=ENDPOINT",
        help="subscribe to a worker's KV events (ZMQ), e.g. http://127.0.0.1:8001=tcp://127.0.0.1:5557",
    )
    k.add_argument(
        "--event-prediction-ttl", dest="event_prediction_ttl_s", type=float, default=d.event_prediction_ttl_s
    )
    add_mm_arguments(p)
    m = p.add_argument_group("assets")
    m.add_argument(
        "--inline-assets",
        action="store_true",
        help="rewrite mmfile:// references to data URLs before forwarding (for real vLLM workers)",
    )
    m.add_argument(
        "--asset-max-age",
        dest="asset_max_age_s",
        type=float,
        default=d.asset_max_age_s,
        help="derived artifacts older than this are swept (source images never are)",
    )
    m.add_argument(
        "--asset-sweep-interval",
        dest="asset_sweep_interval_s",
        type=float,
        default=d.asset_sweep_interval_s,
        help="seconds between sweeps of the asset directory",
    )
    lo = p.add_argument_group("LoRA")
    lo.add_argument("--adapter-dir", type=Path, default=None, help="adapters as <dir>/<name>/")
    lo.add_argument("--adapter-registry", default=None, help="JSON file: {name: {path, base_model}}")
    lo.add_argument("--max-lora-rank", type=int, default=d.max_lora_rank)
    lo.add_argument("--max-loras-per-worker", type=int, default=d.max_loras_per_worker)
    lo.add_argument(
        "--lora-spill-running",
        type=int,
        default=d.lora_spill_running,
        help="route an adapter to a worker without it once all holders run this many requests",
    )
    lo.add_argument(
        "--adapter-load-timeout",
        dest="adapter_load_timeout_s",
        type=float,
        default=d.adapter_load_timeout_s,
        help="seconds a worker may take to load an adapter (the worker's adapter lock is held meanwhile)",
    )
    f = p.add_argument_group("workers and faults")
    f.add_argument("--health-interval", dest="health_interval_s", type=float, default=d.health_interval_s)
    f.add_argument("--health-timeout", dest="health_timeout_s", type=float, default=d.health_timeout_s)
    f.add_argument("--connect-timeout", dest="connect_timeout_s", type=float, default=d.connect_timeout_s)
    f.add_argument("--request-timeout", dest="request_timeout_s", type=float, default=d.request_timeout_s)
    f.add_argument(
        "--max-attempts", type=int, default=d.max_attempts, help="workers a request may be tried on before it fails"
    )
    f.add_argument(
        "--health-failures",
        type=int,
        default=d.health_failures,
        help="consecutive failed health checks before a worker is down and its predicted state dropped",
    )
    f.add_argument(
        "--breaker-failures",
        type=int,
        default=d.breaker_failures,
        help="consecutive failed requests (5xx, timeouts) that take a worker out of rotation",
    )
    f.add_argument(
        "--breaker-cooldown",
        dest="breaker_cooldown_s",
        type=float,
        default=d.breaker_cooldown_s,
        help="least seconds out of rotation; the first passing health check after it lets the worker back in",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--degrade", action="append", default=[], help=argparse.SUPPRESS)  # test-only: proxy/degrade.py
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--disable-log-requests", action="store_true")
    return p


def parse_args(argv: Sequence[str] | None = None) -> ProxyConfig:
    ns = build_parser().parse_args(argv)
    values = vars(ns)
    values["workers"] = [u.rstrip("/") for u in values["workers"]]
    values["kv_events"] = _kv_events(values["kv_events"])
    unknown = set(values["kv_events"]) - set(values["workers"])
    if unknown:
        raise SystemExit(f"--kv-events names workers not in --workers: {', '.join(sorted(unknown))}")
    for flag in ("max_attempts", "health_failures", "breaker_failures", "max_loras_per_worker"):
        if values[flag] < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {values[flag]}")
    registry = values.pop("adapter_registry")
    values["adapter_registry"] = _json_object("--adapter-registry", Path(registry).read_text()) if registry else {}
    mm = pop_mm_options(values)
    try:
        values["degrade"] = parse_modes(values["degrade"])
    except ValueError as exc:
        raise SystemExit(f"--degrade: {exc}") from None
    return ProxyConfig(**values, mm=mm)
