"""How many requests per second one simulated worker serves at --speedup 0 on one core.

The worker is pinned to CPU 0 and the load generator to CPU 1 (when the machine has two), so the figure is
the engine's own per-core capacity. Scenarios: a short text chat; one 512x512 image that repeats (the normal
case of a cached asset); and a distinct 512x512 image per request (worst case: every image is decoded).
Targets: 2,000 req/s text, 1,000 req/s image.

    python benchmarks/sim_worker_rps.py [--duration 5] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.load.closed_loop import LoadResult, closed_loop
from harness.sim.process import worker_argv, worker_env
from harness.stack.ports import allocate_ports, release_ports
from harness.stack.processes import spawn, wait_http_ready

MODEL = "Qwen/Qwen3-VL-2B-Instruct"
TARGETS = {"text": 2000.0, "image (repeated)": 1000.0, "image (distinct)": 1000.0}


def png_data_url(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def body(content: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 16}


def scenarios() -> dict[str, object]:
    repeated = png_data_url((0, 180, 0))
    distinct = [png_data_url((i % 256, (i * 7) % 256, (i * 13) % 256)) for i in range(4096)]

    def image_part(url: str) -> list[dict]:
        return [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What colour is it?"}]

    return {
        "text": lambda i: body(f"Question {i % 64}: summarise the benefits of prefix caching."),
        "image (repeated)": lambda i: body(image_part(repeated)),
        "image (distinct)": lambda i: body(image_part(distinct[i % len(distinct)])),
    }


def report(name: str, r: LoadResult) -> str:
    target = TARGETS[name]
    verdict = "meets" if r.rps >= target else "BELOW"
    return (
        f"{name:18s} {r.rps:9.0f} req/s  p50 {r.percentile(50) * 1e3:6.2f} ms  p99 {r.percentile(99) * 1e3:6.2f} ms"
        f"  errors {r.errors:3d}  target {target:5.0f}  ratio {r.rps / target:4.2f}x  {verdict}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--log-requests", action="store_true", help="keep the worker's per-request log line on")
    args = ap.parse_args()

    ncpu = os.cpu_count() or 1
    (port,) = allocate_ports(1)
    extra = ["--speedup", "0", "--kv-cache-memory-bytes", "4000000000", "--max-model-len", "8192"]
    if not args.log_requests:
        extra.append("--disable-log-requests")
    argv = worker_argv(MODEL, port, "bench-worker", extra)
    pinned = ncpu >= 2 and shutil.which("taskset") is not None
    if pinned:
        argv = ["taskset", "-c", "0", *argv]
        os.sched_setaffinity(0, {1})
    log_dir = Path(tempfile.mkdtemp(prefix="mmharness-bench-"))
    proc = spawn("bench-worker", argv, log_dir / "worker.log", env=worker_env())
    try:
        wait_http_ready(f"http://127.0.0.1:{port}/health", proc, 30)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        print(
            f"simulated worker {MODEL}, --speedup 0, worker on {'CPU 0' if pinned else 'any CPU'}, "
            f"load generator on {'CPU 1' if pinned else 'any CPU'}, concurrency {args.concurrency}, "
            f"{args.duration:.0f} s per scenario, request logging {'on' if args.log_requests else 'off'}"
        )
        for name, make in scenarios().items():
            asyncio.run(closed_loop(url, make, concurrency=args.concurrency, duration_s=0.5))  # warm-up
            result = asyncio.run(closed_loop(url, make, concurrency=args.concurrency, duration_s=args.duration))
            print(report(name, result), flush=True)
    finally:
        proc.terminate()
        release_ports([port])
    return 0


if __name__ == "__main__":
    sys.exit(main())
