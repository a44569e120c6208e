"""Run the gate against every test-only degradation and print which checks rejected each, in which suite.

Each row boots the default simulated stack (2 workers + the proxy, Qwen3-VL-2B) with one degradation switched on
(``--degrade`` on the proxy or the worker, a degraded policy, or mismatched settings), runs the whole gate (the
pre_merge and post_merge steps), and lists the *routing* checks that failed, each with the suite whose step
produced it. A degradation no routing check rejects is a hole in the gate. The healthy stacks run first: they
must be green, or the table means nothing.

    python benchmarks/degradation_matrix.py [--only NAME ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.contract import ENV_MEDIA_HOSTS
from harness.gate.image_server import ImageServer
from harness.gate.payloads import make_lora_adapter
from harness.gate.scenario import GateResult, run_gate
from harness.profiles import Case, ModelProfile, Topology
from harness.stack.launch import LaunchError, launched
from harness.stack.spec import DEFAULT_ADAPTER

MODEL = ModelProfile("Qwen/Qwen3-VL-2B-Instruct", "qwen3-vl-2b", family="qwen3_vl")
BASE = Topology(
    "matrix",
    "agg_router.sh",
    workers=2,
    router="proxy",
    policy="kv_mm",
    requested_kv_cache_bytes=5 * 1024**3,
    timeout_s=90,
)
LORA = replace(BASE, name="matrix_lora", script="agg_router_lora.sh")
#: Workers declared (and started) with a smaller max_pixels: 512x512 -> 196 tokens instead of 256.
SMALL_PIXELS = '--mm-processor-kwargs {"max_pixels":200704}'


@dataclass(frozen=True)
class Row:
    name: str
    where: str  # router | worker
    what: str
    policy: str = "kv_mm"
    router_args: str = ""
    worker_args: str = ""
    lora: bool = False
    #: Workers publish KV events and the proxy consumes them (the gate's eviction step runs).
    kv_events: bool = False


ROWS = (
    Row("text_key", "router", "kv_text: placeholders keyed without the image", policy="kv_text"),
    Row("url_hash", "router", "image keyed by its URL/reference string", router_args="--degrade url_hash"),
    Row("first_image_only", "router", "only the first image in the key", router_args="--degrade first_image_only"),
    Row("no_offset", "router", "image offsets unknown: image keys on the first block",
        router_args="--degrade no_offset"),
    Row("truncated_hash", "router", "image hash over the first 32 bytes (collisions)",
        router_args="--degrade truncated_hash"),
    Row("never_forgets", "router", "index never expires or evicts, ignores KV-event removals and clears",
        router_args="--degrade never_forgets", kv_events=True),
    Row("no_lora", "router", "LoRA adapter left out of the key", router_args="--degrade no_lora", lora=True),
    Row("geometry", "router", "router counts image tokens at defaults, workers at max_pixels 200704",
        router_args=f"{SMALL_PIXELS} --degrade geometry", worker_args=SMALL_PIXELS),
    Row("block_size", "router", "router hashes 32-token blocks, workers 16", router_args="--degrade block_size"),
    Row("random", "router", "random routing", policy="random"),
    Row("round_robin", "router", "round-robin routing", policy="round_robin"),
    Row("no_prefix_cache", "worker", "prefix cache off", worker_args="--degrade no_prefix_cache"),
    Row("misreport_cached", "worker", "cached_tokens reports every full block",
        worker_args="--degrade misreport_cached"),
    Row("size_only_hash", "worker", "image hashed by its size only", worker_args="--degrade size_only_hash"),
    Row("no_last_token_rule", "worker", "last prompt token served from the cache",
        worker_args="--degrade no_last_token_rule"),
)
HEALTHY = (Row("healthy", "-", "kv_mm, no degradation"), Row("healthy_lora", "-", "kv_mm + LoRA", lora=True),
           Row("healthy_kv_events", "-", "kv_mm, index fed by the workers' KV events", kv_events=True))
#: Healthy rows run the whole gate; a degraded row first the pre_merge steps, then (if they pass it) all of them.


@dataclass
class Outcome:
    row: Row
    passed: bool
    routing: list[tuple[str, str]] = field(default_factory=list)  # (check, suite)
    other: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    suite: str = ""


def case_for(row: Row) -> Case:
    topo = replace(LORA if row.lora else BASE, name=f"matrix_{row.name}", policy=row.policy, kv_events=row.kv_events,
                   env={"HARNESS_EXTRA_ROUTER_ARGS": row.router_args} if row.router_args else {})
    return Case(MODEL, topo, payload="lora" if row.lora else "image_url",
                extra_script_args=(row.worker_args,) if row.worker_args else ())


def gate_once(row: Row, images: ImageServer, tmp: Path, suite: str) -> GateResult:
    extra: dict[str, str] = {ENV_MEDIA_HOSTS: images.host_port}
    if row.lora:
        adapters = tmp / f"adapters-{row.name}-{suite}"
        make_lora_adapter(adapters, DEFAULT_ADAPTER, MODEL.model)
        extra["HARNESS_ADAPTER_DIR"] = str(adapters)
    # One log directory per boot: a relaunch of the same case id must not read the last boot's launch log.
    with launched(case_for(row), tmp / f"logs-{row.name}-{suite}", extra_env=extra) as stack:
        return run_gate(stack, images, suite=suite)


def run_row(row: Row, images: ImageServer, tmp: Path) -> Outcome:
    """The pre_merge steps first (LoRA rows: post_merge, where LoRA cases run); the whole gate when they do not
    reject it, so the suite column says where the degradation is first caught."""
    t0 = time.monotonic()
    suites = ("post_merge",) if row.lora or row.name.startswith("healthy") else ("pre_merge", "post_merge")
    for suite in suites:
        try:
            result = gate_once(row, images, tmp, suite)
        except LaunchError as exc:
            return Outcome(row, False, error=str(exc).splitlines()[0], seconds=time.monotonic() - t0)
        out = Outcome(row, result.passed, seconds=time.monotonic() - t0, suite=suite)
        for c in result.failures:
            if c.kind == "routing":
                out.routing.append((c.name, c.suite))
            else:
                out.other.append(f"{c.kind}: {c.name}")
        if out.routing:
            return out
    return out


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| degradation | where | rejected by (routing checks) | first rejected in | also failed |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        if o.error:
            lines.append(f"| {o.row.name} | {o.row.where} | stack did not come up: {o.error[:80]} | - | - |")
            continue
        if o.row.name.startswith("healthy"):
            verdict = "green (no check failed)" if o.passed else "**RED: " + "; ".join(
                [n for n, _ in o.routing] + o.other) + "**"
            lines.append(f"| {o.row.name} | - | {verdict} | - | - |")
            continue
        checks = "; ".join(sorted({n for n, _ in o.routing})) or "**NOT REJECTED**"
        suites = o.suite if o.routing else "-"
        lines.append(f"| {o.row.name} | {o.row.where} | {checks} | {suites} | {'; '.join(o.other) or '-'} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", default=None, help="rows to run (names from the table)")
    ap.add_argument("--json", type=Path, default=None, help="also write the outcomes here")
    args = ap.parse_args()
    rows = [r for r in (*HEALTHY, *ROWS) if args.only is None or r.name in args.only]
    outcomes = []
    with ImageServer() as images, tempfile.TemporaryDirectory(prefix="mmharness-matrix-") as tmp:
        for row in rows:
            o = run_row(row, images, Path(tmp))
            verdict = "error" if o.error else ("pass" if o.passed else f"rejected by {len(set(o.routing))} check(s)")
            print(f"{row.name:20s} {verdict:28s} {o.seconds:5.1f} s", flush=True)
            outcomes.append(o)
    print()
    print(table(outcomes))
    if args.json:
        args.json.write_text(json.dumps([{"name": o.row.name, "passed": o.passed, "routing": o.routing,
                                          "other": o.other, "error": o.error} for o in outcomes], indent=2))
    holes = [o.row.name for o in outcomes if not o.row.name.startswith("healthy") and not o.routing]
    red = [o.row.name for o in outcomes if o.row.name.startswith("healthy") and not o.passed]
    print(f"\ndegradations not rejected by any routing check: {', '.join(holes) or 'none'}; "
          f"healthy stacks red: {', '.join(red) or 'none'}")
    return 1 if holes or red else 0


if __name__ == "__main__":
    sys.exit(main())
