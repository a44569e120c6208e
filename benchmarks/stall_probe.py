"""How long one hostile request freezes a server: the longest /health gap while it is handled, and RSS growth.

Starts one simulated worker (``--speedup 0``), probes ``/health`` every 5 ms from a second connection, sends one
request (an 8192x8192 PNG at the pixel limit, a gzip body expanding to 42 MB, a 30 MB text prompt) and prints
the request's status and time, the longest probe gap (event-loop block) and the worker's RSS before / peak.

    python benchmarks/stall_probe.py [--python PYTHON] [--cwd TREE]   # another tree measures "before"
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.server.fuzz import gzip_bomb, http_request, huge_png, send_raw
from harness.stack.ports import allocate_ports, release_ports

MODEL = "Qwen/Qwen3-VL-2B-Instruct"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def probe(port: int, raw: bytes) -> tuple[int, float, float]:
    gaps: list[float] = []
    done = asyncio.Event()

    async def health() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await send_raw("127.0.0.1", port, http_request("GET", "/health"), 60)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            await asyncio.sleep(0.005)

    task = asyncio.create_task(health())
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    reply = await send_raw("127.0.0.1", port, raw, 120)
    took = time.perf_counter() - t0
    await asyncio.sleep(0.2)
    done.set()
    await task
    return reply.status, took, max(gaps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--cwd", default=str(Path(__file__).resolve().parents[1]), help="the tree whose worker runs")
    args = ap.parse_args()
    png = huge_png()
    chat = {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
                    },
                    {"type": "text", "text": "colour?"},
                ],
            }
        ],
    }
    cases = {
        f"8192x8192 PNG ({len(png) // 1024} KB)": http_request(
            "POST", "/v1/chat/completions", json.dumps(chat).encode()
        ),
        "gzip body -> 42 MB": http_request(
            "POST", "/v1/completions", gzip_bomb(42 << 20), [("Content-Encoding", "gzip")]
        ),
        "30 MB text prompt": http_request(
            "POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "word " * (6 << 20)}).encode()
        ),
    }
    for name, raw in cases.items():
        (port,) = allocate_ports(1)
        log = Path(tempfile.mkstemp(prefix="stall-", suffix=".log")[1]).open("wb")  # noqa: SIM115 -- closed below
        proc = subprocess.Popen(
            [
                args.python,
                "-m",
                "harness.sim.worker",
                "--model",
                MODEL,
                "--port",
                str(port),
                "--speedup",
                "0",
                "--kv-cache-memory-bytes",
                "1000000000",
                "--max-model-len",
                "8192",
            ],
            cwd=args.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:
            for _ in range(300):
                if asyncio.run(send_raw("127.0.0.1", port, http_request("GET", "/health"), 2)).status == 200:
                    break
                time.sleep(0.1)
            before = rss_kib(proc.pid)
            status, took, gap = asyncio.run(probe(port, raw))
            peak = rss_kib(proc.pid, "VmHWM")
            print(
                f"{name:28s} status={status} request={took:6.2f}s max_health_gap={gap * 1e3:7.0f} ms "
                f"rss_before={before / 1024:6.0f} MiB peak={peak / 1024:6.0f} MiB (+{(peak - before) / 1024:.0f})"
            )
        finally:
            proc.terminate()
            proc.wait(10)
            log.close()
            release_ports([port])
    return 0


if __name__ == "__main__":
    sys.exit(main())
