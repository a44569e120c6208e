"""What a front door costs: added latency, capacity and memory of the harness proxy, next to vllm-router.

One run, the same two simulated workers (--speedup 0) behind every front door:

1. Added latency. Requests are sent one at a time (concurrency 1, after a warm-up), so the figures are latency,
   not queueing: a short text chat, and a chat with one 512x512 PNG as a base64 data URL (the same image each
   time, the normal case of a repeated asset). Front doors: direct to worker 0, harness proxy (kv_mm and
   round_robin), vllm-router (round_robin and cache_aware). Targets for the harness proxy: added p50 < 1 ms
   for text and < 2 ms with one image. "direct (again)" repeats the direct run at the end: its difference to
   the first is the run-to-run noise floor.
2. Capacity. Closed loop at concurrency 32 for a few seconds, text and image, harness proxy (kv_mm) next to
   direct-to-worker.
3. Memory. 10,000 image requests, each with a distinct 512x512 PNG, to a fresh kv_mm proxy; its resident set
   (VmRSS) is sampled every 1,000 requests. The proxy keeps bounded memos (ImageResolver: 4,096 entries) and a
   bounded per-worker PredictedIndex (--index-capacity-blocks, 200,000 blocks each), so some bounded growth is
   expected; the run prints it and what the index holds.

With two CPUs, workers and the front door under test run on CPU 0 and the load generator on CPU 1. CPU time per
request of the front door (from /proc/<pid>/stat) is printed too: it does not depend on pinning. Figures only;
nothing is asserted.

    python benchmarks/proxy_overhead.py [--requests 2000] [--duration 4] [--rss-requests 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.load.closed_loop import LoadResult, closed_loop
from harness.ports import allocate_ports, release_ports
from harness.procs import ManagedProcess, spawn, wait_http_ready
from harness.sim.process import WorkerHandle, start_workers, stop_workers, worker_env

MODEL = "Qwen/Qwen3-VL-2B-Instruct"
WORKER_ARGS = [
    "--speedup",
    "0",
    "--kv-cache-memory-bytes",
    "2000000000",
    "--max-model-len",
    "8192",
    "--disable-log-requests",
]
#: Added p50 latency targets for the harness proxy, in ms.
TARGETS_MS = {"text": 1.0, "image": 2.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- request bodies ------------------------------------------------------------------------------------------
def rgb_png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (512, 512), colour).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


_PALETTE_IDAT = zlib.compress(b"\x00" * (513 * 512), 9)  # 512 rows of (filter 0, 512 pixels of index 0)


def solid_palette_png(colour: tuple[int, int, int]) -> bytes:
    """A 512x512 PNG of one colour, built in microseconds: identical pixel data, the colour in the palette."""
    ihdr = struct.pack(">IIBBBBB", 512, 512, 8, 3, 0, 0, 0)  # 8-bit palette, no interlace
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"PLTE", bytes(colour))
        + _chunk(b"IDAT", _PALETTE_IDAT)
        + _chunk(b"IEND", b"")
    )


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def body(content: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 16}


def image_body(url: str) -> dict:
    return body([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What colour is it?"}])


def kinds() -> dict[str, Callable[[int], dict]]:
    text = body("Summarise the benefits of prefix caching in one sentence.")
    image = image_body(data_url(rgb_png((0, 180, 0))))
    return {"text": lambda i: text, "image": lambda i: image}


def distinct_image(i: int) -> dict:
    return image_body(data_url(solid_palette_png((i % 256, (i // 256) % 256, 77 + (i // 65536) % 128))))


# -- processes -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def cpus(mask: set[int] | None) -> Iterator[None]:
    """Processes spawned inside inherit ``mask`` (no change when None)."""
    if mask is None:
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, mask)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def proc_status(pid: int, field_name: str) -> str:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def rss_kib(pid: int) -> int:
    value = proc_status(pid, "VmRSS")
    return int(value.split()[0]) if value[:1].isdigit() else -1


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of all threads of ``pid``."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


@dataclass
class FrontDoor:
    name: str
    url: str
    procs: list[ManagedProcess] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.procs[0].pid if self.procs else None

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        if self.ports:
            release_ports(self.ports)


def router_binary() -> str | None:
    local = Path(sys.executable).parent / "vllm-router"
    return str(local) if local.exists() else shutil.which("vllm-router")


def start_proxy(policy: str, workers: list[WorkerHandle], log_dir: Path, mask: set[int] | None) -> FrontDoor:
    (port,) = allocate_ports(1)
    argv = [sys.executable, "-m", "harness.proxy", "--model", MODEL, "--workers", *[w.url for w in workers]]
    argv += ["--port", str(port), "--policy", policy, "--disable-log-requests"]
    with cpus(mask):
        proc = spawn(f"proxy-{policy}", argv, log_dir / f"proxy-{policy}-{port}.log", env=worker_env())
    door = FrontDoor(f"harness proxy {policy}", f"http://127.0.0.1:{port}", [proc], [port])
    try:
        wait_http_ready(f"{door.url}/health", proc, 60)
    except BaseException:
        door.stop()
        raise
    return door


def start_router(
    binary: str, policy: str, workers: list[WorkerHandle], log_dir: Path, mask: set[int] | None
) -> FrontDoor:
    port, metrics_port = allocate_ports(2)
    argv = [binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *[w.url for w in workers]]
    argv += ["--policy", policy, "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port)]
    argv += ["--worker-startup-check-interval", "1"]
    with cpus(mask):
        proc = spawn(f"vllm-router-{policy}", argv, log_dir / f"vllm-router-{policy}-{port}.log", env=worker_env())
    door = FrontDoor(f"vllm-router {policy}", f"http://127.0.0.1:{port}", [proc], [port, metrics_port])
    try:
        wait_http_ready(f"{door.url}/health", proc, 60)
    except BaseException:
        door.stop()
        raise
    return door


# -- measuring -----------------------------------------------------------------------------------------------
def run_loop(url: str, make: Callable[[int], dict], *, concurrency: int, n: int | None, duration: float) -> LoadResult:
    return asyncio.run(
        closed_loop(f"{url}/v1/chat/completions", make, concurrency=concurrency, duration_s=duration, max_requests=n)
    )


@dataclass
class LatencyRow:
    name: str
    results: dict[str, LoadResult]
    cpu_us: dict[str, float]  # front door CPU per request, by kind


def measure_latency(door: FrontDoor, requests: int, warmup: int) -> LatencyRow:
    results: dict[str, LoadResult] = {}
    cpu_us: dict[str, float] = {}
    for kind, make in kinds().items():
        run_loop(door.url, make, concurrency=1, n=warmup, duration=600)
        c0 = cpu_seconds(door.pid) if door.pid else float("nan")
        results[kind] = run_loop(door.url, make, concurrency=1, n=requests, duration=600)
        c1 = cpu_seconds(door.pid) if door.pid else float("nan")
        cpu_us[kind] = (c1 - c0) / max(results[kind].ok, 1) * 1e6
    return LatencyRow(door.name, results, cpu_us)


def ms(seconds: float) -> float:
    return seconds * 1e3


def latency_table(rows: list[LatencyRow], kind: str) -> list[str]:
    base = rows[0].results[kind]
    b50, b99 = base.percentile(50), base.percentile(99)
    target = TARGETS_MS[kind]
    out = [
        f"  {kind}: added p50 target for the harness proxy < {target:.0f} ms",
        f"  {'front door':26s} {'p50 ms':>7s} {'p99 ms':>7s} {'mean ms':>7s} {'+p50 ms':>8s} {'+p99 ms':>8s}"
        f" {'door CPU us/req':>15s} {'errors':>6s}  verdict",
    ]
    for row in rows:
        r = row.results[kind]
        p50, p99 = r.percentile(50), r.percentile(99)
        mean = sum(r.latencies_s) / len(r.latencies_s) if r.latencies_s else float("nan")
        added50, added99 = ms(p50 - b50), ms(p99 - b99)
        is_base = row is rows[0]
        cpu = "" if row.cpu_us.get(kind) is None or row.cpu_us[kind] != row.cpu_us[kind] else f"{row.cpu_us[kind]:.0f}"
        verdict = ""
        if row.name.startswith("harness proxy"):
            verdict = f"{'PASS' if added50 < target else 'BELOW'} ({added50:.3f} / {target:.0f} ms)"
        out.append(
            f"  {row.name:26s} {ms(p50):7.3f} {ms(p99):7.3f} {ms(mean):7.3f}"
            f" {'-' if is_base else f'{added50:+.3f}':>8s} {'-' if is_base else f'{added99:+.3f}':>8s}"
            f" {cpu:>15s} {r.errors:6d}  {verdict}"
        )
    return out


def capacity_line(name: str, kind: str, r: LoadResult, direct: LoadResult | None, cpu_us: float) -> str:
    ratio = f"{r.rps / direct.rps:5.2f}x direct" if direct is not None and direct.rps else ""
    cpu = f"  door CPU {cpu_us:4.0f} us/req" if cpu_us == cpu_us else ""
    return (
        f"  {name:22s} {kind:6s} {r.rps:7.0f} req/s  p50 {ms(r.percentile(50)):6.2f} ms"
        f"  p99 {ms(r.percentile(99)):6.2f} ms  errors {r.errors:3d}  {ratio}{cpu}"
    )


def predicted_blocks(url: str) -> int:
    try:
        return sum(int(w["predicted_blocks"]) for w in httpx.get(f"{url}/workers", timeout=5).json())
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return -1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests per front door and kind")
    ap.add_argument("--warmup", type=int, default=200, help="sequential warm-up requests per front door and kind")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per capacity scenario")
    ap.add_argument("--concurrency", type=int, default=32, help="clients in the capacity test")
    ap.add_argument("--rss-requests", type=int, default=10000, help="distinct-image requests in the memory test")
    ap.add_argument("--rss-concurrency", type=int, default=16)
    ap.add_argument("--rss-step", type=int, default=1000, help="sample the proxy's RSS every this many requests")
    ap.add_argument("--no-router", action="store_true", help="leave vllm-router out")
    args = ap.parse_args()

    t_start = time.perf_counter()
    ncpu = len(os.sched_getaffinity(0))
    pin = ncpu >= 2
    server_cpus = {min(os.sched_getaffinity(0))} if pin else None
    client_cpus = set(sorted(os.sched_getaffinity(0))[1:2]) if pin else None
    binary = None if args.no_router else router_binary()
    log_dir = Path(tempfile.mkdtemp(prefix="mmharness-proxy-bench-"))

    with cpus(server_cpus):
        workers = start_workers(2, MODEL, log_dir, WORKER_ARGS)
    doors: list[FrontDoor] = []
    try:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        where = (
            f"workers and the front door under test on CPU {sorted(server_cpus)[0]} "
            f"(worker0 Cpus_allowed_list={proc_status(workers[0].proc.pid, 'Cpus_allowed_list')}), "
            f"load generator on CPU {sorted(client_cpus)[0]}"
            if pin
            else "not pinned (fewer than two CPUs)"
        )
        print(f"proxy overhead benchmark: 2 simulated workers {MODEL}, --speedup 0; logs in {log_dir}")
        print(f"pinning: {where}")
        print("harness proxy runs with --disable-log-requests (its [ROUTING] record is still logged, at info)")
        if binary is None:
            print("NOTE: vllm-router is not installed (or --no-router): its rows are skipped")
        print(flush=True)

        # 1. added latency --------------------------------------------------------------------------------------
        print(f"1. added latency, sequential (concurrency 1): {args.warmup} warm-up + {args.requests} requests each")
        direct = FrontDoor("direct (worker0)", workers[0].url)
        rows = [measure_latency(direct, args.requests, args.warmup)]
        starters: list[Callable[[], FrontDoor]] = [
            lambda: start_proxy("kv_mm", workers, log_dir, server_cpus),
            lambda: start_proxy("round_robin", workers, log_dir, server_cpus),
        ]
        if binary is not None:
            starters += [
                lambda: start_router(binary, "round_robin", workers, log_dir, server_cpus),
                lambda: start_router(binary, "cache_aware", workers, log_dir, server_cpus),
            ]
        for start in starters:
            door = start()
            doors.append(door)
            try:
                rows.append(measure_latency(door, args.requests, args.warmup))
            finally:
                door.stop()
                doors.remove(door)
        again = measure_latency(direct, args.requests, args.warmup)
        again.name = "direct (again)"
        rows.append(again)
        for kind in kinds():
            print("\n".join(latency_table(rows, kind)))
        print(
            "  (+p50/+p99: the front door's p50/p99 minus direct's; door CPU: the front door process's user+system"
            " CPU time per request)",
            flush=True,
        )
        print()

        # 2. capacity -------------------------------------------------------------------------------------------
        print(f"2. capacity: closed loop, concurrency {args.concurrency}, {args.duration:g} s per scenario")
        door = start_proxy("kv_mm", workers, log_dir, server_cpus)
        doors.append(door)
        try:
            for kind, make in kinds().items():
                results: dict[str, LoadResult] = {}
                for name, target, pid in (("direct (worker0)", direct.url, None), (door.name, door.url, door.pid)):
                    run_loop(target, make, concurrency=args.concurrency, n=None, duration=0.5)  # warm-up
                    c0 = cpu_seconds(pid) if pid else float("nan")
                    r = run_loop(target, make, concurrency=args.concurrency, n=None, duration=args.duration)
                    cpu_us = ((cpu_seconds(pid) - c0) / max(r.ok, 1) * 1e6) if pid else float("nan")
                    results[name] = r
                    print(capacity_line(name, kind, r, results.get("direct (worker0)") if pid else None, cpu_us))
            print(
                "  (direct: one worker on the server CPU; proxy: proxy + two workers sharing the same CPU)", flush=True
            )
        finally:
            door.stop()
            doors.remove(door)
        print()

        # 3. memory ---------------------------------------------------------------------------------------------
        step = max(1, min(args.rss_step, args.rss_requests))
        print(
            f"3. proxy memory: {args.rss_requests} requests, each a distinct 512x512 PNG data URL, "
            f"concurrency {args.rss_concurrency}, fresh kv_mm proxy"
        )
        door = start_proxy("kv_mm", workers, log_dir, server_cpus)
        doors.append(door)
        try:
            assert door.pid is not None
            print(f"  {'after':>8s} {'VmRSS MiB':>10s} {'VmHWM':>12s} {'index blocks':>13s} {'errors':>6s}")
            print(f"  {0:8d} {rss_kib(door.pid) / 1024:10.1f} {proc_status(door.pid, 'VmHWM'):>12s}"
                  f" {predicted_blocks(door.url):13d} {0:6d}")
            samples: list[tuple[int, int, int]] = []
            sent = errors = 0
            t0 = time.perf_counter()
            while sent < args.rss_requests:
                n = min(step, args.rss_requests - sent)
                offset = sent
                r = run_loop(
                    door.url,
                    lambda i, offset=offset: distinct_image(offset + i),
                    concurrency=args.rss_concurrency,
                    n=n,
                    duration=600,
                )
                sent += n
                errors += r.errors
                kib, blocks = rss_kib(door.pid), predicted_blocks(door.url)
                samples.append((sent, kib, blocks))
                print(f"  {sent:8d} {kib / 1024:10.1f} {proc_status(door.pid, 'VmHWM'):>12s} {blocks:13d}"
                      f" {r.errors:6d}", flush=True)
            elapsed = time.perf_counter() - t0
            print(f"  {sent} requests in {elapsed:.1f} s ({sent / elapsed:.0f} req/s), errors {errors}")
            base = next((s for s in samples if s[0] >= min(1000, sent)), samples[0])
            last = samples[-1]
            grow_kib = last[1] - base[1]
            print(
                f"  growth after warm-up ({base[0]} -> {last[0]} requests): {grow_kib / 1024:+.1f} MiB"
                f" ({grow_kib / base[1] * 100 if base[1] > 0 else float('nan'):+.1f}%),"
                f" {grow_kib * 1024 / max(last[0] - base[0], 1):.0f} bytes per request"
            )
            d_blocks = last[2] - base[2]
            if d_blocks > 0:
                per_block = grow_kib * 1024 / d_blocks
                cap = 200_000 * len(workers)
                ceiling = (cap - base[2]) * per_block / 2**20
                print(
                    f"  the PredictedIndex grew by {d_blocks} blocks (~{per_block:.0f} bytes of RSS per block); it is"
                    f" capped at 200,000 blocks per worker ({cap:,} here), so at this rate the growth stops"
                    f" ~{ceiling:.0f} MiB above the warm-up sample"
                )
            half = samples[len(samples) // 2]
            if last[0] > half[0] > base[0]:
                first = (half[1] - base[1]) * 1024 / (half[0] - base[0])
                second = (last[1] - half[1]) * 1024 / (last[0] - half[0])
                print(f"  bytes per request: {first:.0f} in the first half after warm-up, {second:.0f} in the second")
        finally:
            door.stop()
            doors.remove(door)
    finally:
        for door in doors:
            door.stop()
        stop_workers(workers)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
