"""What a front door costs: added latency, capacity and memory of the harness proxy, next to vllm-router.

One run, the same two simulated workers (--speedup 0) behind every front door:

1. Added latency. Requests are sent one at a time (concurrency 1, after a warm-up), so the figures are latency,
   not queueing: a short text chat, and a chat with one 512x512 PNG as a base64 data URL, once a solid colour
   (~2 KB) and once photo-sized (gradients plus noise, ~370 KB), the same image every time (the normal case of a
   repeated asset). Front doors: direct to worker 0, harness proxy (kv_mm and round_robin), vllm-router
   (round_robin and cache_aware; skipped when not installed). Targets for the harness proxy: added p50 < 1 ms
   for text and < 2 ms with one image. "direct (again)" repeats the direct run at the end: its difference to
   the first is the run-to-run noise floor.
2. Capacity. Closed loop at concurrency 32 for a few seconds, the same three kinds, harness proxy (kv_mm) next
   to direct-to-worker.
3. Memory. 10,000 image requests, each with a distinct 512x512 PNG, to a fresh kv_mm proxy; its resident set
   (VmRSS) is sampled every 1,000 requests. The proxy keeps bounded memos (ImageResolver: 4,096 entries) and a
   bounded per-worker PredictedIndex (--index-capacity-blocks, 32,768 blocks each by default), so some bounded
   growth is expected; the run prints it and what the index holds.

With two CPUs, workers and the front door under test run on CPU 0 and the load generator on CPU 1. CPU time per
request of the front door (from /proc/<pid>/stat) is printed too: it does not depend on pinning. Figures only;
nothing is asserted.

    python benchmarks/proxy_overhead.py [--requests 2000] [--duration 4] [--rss-requests 10000]
                                        [--phases latency,capacity,memory] [--no-router]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import inspect
import io
import os
import random
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.load.closed_loop import LoadResult, closed_loop
from harness.mm.resolver import ImageResolver
from harness.proxy.config import ProxyConfig
from harness.sim.process import WorkerHandle, start_workers, stop_workers, worker_env
from harness.stack.ports import allocate_ports, release_ports
from harness.stack.processes import ManagedProcess, spawn, wait_http_ready

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
TARGETS_MS = {"text": 1.0, "image": 2.0}  # by the kind's first word
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXY_INDEX_CAPACITY = ProxyConfig(model="", workers=[], port=0).index_capacity_blocks
MEMO_SIZE = inspect.signature(ImageResolver).parameters["memo_size"].default


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


def photo_like_png(seed: int = 0) -> bytes:
    """512x512 gradients plus low-amplitude noise: about the size of a PNG photo (~370 KB)."""
    rng = random.Random(seed)
    g = Image.linear_gradient("L").resize((512, 512))
    chans = [g, g.rotate(90), g.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    noisy = [
        ImageChops.add(c, Image.frombytes("L", c.size, rng.randbytes(512 * 512)).point(lambda v: v >> 5)) for c in chans
    ]
    buf = io.BytesIO()
    Image.merge("RGB", noisy).save(buf, "PNG")
    return buf.getvalue()


@functools.cache
def kinds() -> dict[str, Callable[[int], dict]]:
    """Request kinds of the latency and capacity tests: the same body every time (a repeated asset)."""
    text = body("Summarise the benefits of prefix caching in one sentence.")
    solid, photo = rgb_png((0, 180, 0)), photo_like_png()
    small, large = image_body(data_url(solid)), image_body(data_url(photo))
    return {
        "text": lambda i: text,
        # A new ~500-character text each time: nothing of the user turn is memoized (the template pieces are).
        "text, 500 chars, new each time": lambda i: body(f"Request {i}. {PROSE}"),
        f"image, solid PNG {len(solid) / 1e3:.1f} KB": lambda i: small,
        f"image, photo-sized PNG {len(photo) / 1e3:.0f} KB": lambda i: large,
    }


PROSE = (
    "Prefix caching keeps the key and value tensors of blocks that earlier requests computed, so a request whose "
    "prompt starts with the same tokens skips their prefill. A router that knows which worker holds which blocks "
    "sends each request where most of its prompt is cached; one that guesses wrong costs a full prefill, and with "
    "images that includes the vision encoder as well as the language model."
)


def generated_tokenizer(directory: Path) -> str:
    """A byte-level BPE (like Qwen's) with about 8,000 ids, trained here on English prose and code from the standard
    library's sources, Qwen's special tokens added: a real ``tokenizers`` tokenizer for the cost, with no download
    (Qwen's has 151,643 ranks; encoding cost grows with text length far more than with vocabulary size)."""
    import argparse as _argparse
    import asyncio.base_events as _base_events
    import json as _json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [inspect.getsource(m) for m in (_argparse, _base_events, _json, inspect, statistics)] + [PROSE] * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                            "<|image_pad|>", "<|video_pad|>"])  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}')
    return str(directory)


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


def vm_kib(pid: int, name: str) -> int:
    """VmRSS, VmHWM, ... of ``pid`` in KiB (-1 when unreadable)."""
    value = proc_status(pid, name)
    return int(value.split()[0]) if value[:1].isdigit() else -1


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


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
    proc: ManagedProcess | None = None  # None: a worker itself (direct), not ours to stop here
    ports: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
        if self.ports:
            release_ports(self.ports)


def router_binary() -> str | None:
    local = Path(sys.executable).parent / "vllm-router"
    return str(local) if local.exists() else shutil.which("vllm-router")


def start_proxy(
    policy: str, workers: list[WorkerHandle], log_dir: Path, mask: set[int] | None, extra: Sequence[str] = ()
) -> FrontDoor:
    """``python -m harness.proxy`` with ``--disable-log-requests`` (its [ROUTING] record is still logged)."""
    (port,) = allocate_ports(1)
    argv = [sys.executable, "-m", "harness.proxy", "--model", MODEL, "--workers", *[w.url for w in workers]]
    argv += ["--port", str(port), "--policy", policy, "--disable-log-requests", *extra]
    with cpus(mask):
        proc = spawn(f"proxy-{policy}", argv, log_dir / f"proxy-{policy}-{port}.log", env=worker_env())
    door = FrontDoor(f"harness proxy {policy}", f"http://127.0.0.1:{port}", proc, [port])
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
    door = FrontDoor(f"vllm-router {policy}", f"http://127.0.0.1:{port}", proc, [port, metrics_port])
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
class Setup:
    workers: list[WorkerHandle]
    log_dir: Path
    server_cpus: set[int] | None
    router: str | None
    proxy_args: tuple[str, ...] = ()

    @property
    def direct(self) -> FrontDoor:
        return FrontDoor("direct (worker0)", self.workers[0].url)

    def proxy(self, policy: str, *extra: str) -> FrontDoor:
        return start_proxy(policy, self.workers, self.log_dir, self.server_cpus, (*self.proxy_args, *extra))


@contextlib.contextmanager
def running(door: FrontDoor) -> Iterator[FrontDoor]:
    try:
        yield door
    finally:
        door.stop()


def ms(seconds: float) -> float:
    return seconds * 1e3


def per_request_us(cpu_s: float, r: LoadResult) -> float:
    return cpu_s / max(r.ok, 1) * 1e6


# -- 1. added latency ----------------------------------------------------------------------------------------
@dataclass
class LatencyRow:
    name: str
    results: dict[str, LoadResult]
    cpu_us: dict[str, float | None]  # front door CPU per request, by kind (None: not measured)


def measure_latency(door: FrontDoor, requests: int, warmup: int, name: str | None = None) -> LatencyRow:
    results: dict[str, LoadResult] = {}
    cpu_us: dict[str, float | None] = {}
    for kind, make in kinds().items():
        run_loop(door.url, make, concurrency=1, n=warmup, duration=600)
        c0 = cpu_seconds(door.pid) if door.pid else 0.0
        results[kind] = run_loop(door.url, make, concurrency=1, n=requests, duration=600)
        cpu_us[kind] = per_request_us(cpu_seconds(door.pid) - c0, results[kind]) if door.pid else None
    return LatencyRow(name or door.name, results, cpu_us)


def latency_table(rows: list[LatencyRow], kind: str) -> list[str]:
    base = rows[0].results[kind]
    b50, b99 = base.percentile(50), base.percentile(99)
    target = TARGETS_MS[kind.split(",")[0]]
    out = [
        f"  {kind} (target for the harness proxy: added p50 < {target:.0f} ms)",
        f"  {'front door':26s} {'p50 ms':>7s} {'p99 ms':>7s} {'mean ms':>7s} {'+p50 ms':>8s} {'+p99 ms':>8s}"
        f" {'door CPU us/req':>15s} {'errors':>6s}  verdict",
    ]
    for row in rows:
        r = row.results[kind]
        p50, p99 = r.percentile(50), r.percentile(99)
        mean = statistics.fmean(r.latencies_s) if r.latencies_s else float("nan")
        added50, added99 = ms(p50 - b50), ms(p99 - b99)
        cpu = row.cpu_us[kind]
        verdict = ""
        if row.name.startswith("harness proxy"):
            verdict = f"{'PASS' if added50 < target else 'BELOW'} (+{added50:.3f} vs < {target:.0f} ms)"
        base_row = row is rows[0]
        out.append(
            f"  {row.name:26s} {ms(p50):7.3f} {ms(p99):7.3f} {ms(mean):7.3f}"
            f" {'-' if base_row else f'{added50:+.3f}':>8s} {'-' if base_row else f'{added99:+.3f}':>8s}"
            f" {'-' if cpu is None else f'{cpu:.0f}':>15s} {r.errors:6d}  {verdict}"
        )
    return out


def phase_latency(setup: Setup, requests: int, warmup: int) -> None:
    print(f"1. added latency, sequential (concurrency 1): {warmup} warm-up + {requests} measured requests per row")
    rows = [measure_latency(setup.direct, requests, warmup)]
    starters: list[Callable[[], FrontDoor]] = [lambda: setup.proxy("kv_mm"), lambda: setup.proxy("round_robin")]
    if setup.router is not None:
        binary = setup.router
        for policy in ("round_robin", "cache_aware"):
            starters.append(
                lambda policy=policy: start_router(binary, policy, setup.workers, setup.log_dir, setup.server_cpus)
            )
    for start in starters:
        with running(start()) as door:
            rows.append(measure_latency(door, requests, warmup))
    rows.append(measure_latency(setup.direct, requests, warmup, name="direct (again)"))
    for kind in kinds():
        print("\n".join(latency_table(rows, kind)))
    print("  +p50/+p99: the row's p50/p99 minus direct's. door CPU: user+system CPU time of the front door process")
    print("  per request. 'direct (again)' against 'direct': the run-to-run noise of these figures.")
    if setup.router is None:
        print("  vllm-router rows skipped: the vllm-router binary is not installed (or --no-router)")
    print(flush=True)


# -- 2. capacity ---------------------------------------------------------------------------------------------
def capacity_line(name: str, kind: str, r: LoadResult, direct: LoadResult | None, cpu_us: float | None) -> str:
    line = (
        f"  {name:20s} {kind:32s} {r.rps:6.0f} req/s  p50 {ms(r.percentile(50)):6.2f} ms"
        f"  p99 {ms(r.percentile(99)):6.2f} ms  errors {r.errors}"
    )
    if direct is not None and direct.rps:
        line += f"  {r.rps / direct.rps:4.2f}x direct"
    if cpu_us:
        line += f"  door CPU {cpu_us:3.0f} us/req (~{1e6 / cpu_us:4.0f} req/s per core)"
    return line


def phase_capacity(setup: Setup, concurrency: int, duration: float) -> None:
    print(f"2. capacity: closed loop, concurrency {concurrency}, {duration:g} s per scenario after a 0.5 s warm-up")
    with running(setup.proxy("kv_mm")) as proxy:
        for kind, make in kinds().items():
            direct: LoadResult | None = None
            for door in (setup.direct, proxy):
                run_loop(door.url, make, concurrency=concurrency, n=None, duration=0.5)
                c0 = cpu_seconds(door.pid) if door.pid else 0.0
                r = run_loop(door.url, make, concurrency=concurrency, n=None, duration=duration)
                cpu_us = per_request_us(cpu_seconds(door.pid) - c0, r) if door.pid else None
                print(capacity_line(door.name, kind, r, direct, cpu_us), flush=True)
                direct = direct or r
    where = "the server CPU" if setup.server_cpus else "any CPU"
    print(f"  direct: one worker, alone on {where}; proxy: the proxy and both workers share {where}.")
    print("  req/s per core: 1e6 / door CPU, the proxy's own ceiling on a core of its own.")
    print(flush=True)


# -- 3. memory -----------------------------------------------------------------------------------------------
def predicted_blocks(url: str) -> int:
    """Blocks in the proxy's PredictedIndex, over all workers (from its /workers view)."""
    try:
        return sum(int(w["predicted_blocks"]) for w in httpx.get(f"{url}/workers", timeout=5).json())
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return -1


def phase_memory(setup: Setup, total: int, concurrency: int, step: int, index_capacity: int | None) -> None:
    step = max(1, min(step, total))
    extra = ("--index-capacity-blocks", str(index_capacity)) if index_capacity else ()
    capacity = index_capacity or PROXY_INDEX_CAPACITY
    print(
        f"3. proxy memory: {total} requests, each with a distinct 512x512 PNG data URL, concurrency {concurrency},"
        f" a fresh kv_mm proxy (--index-capacity-blocks {capacity})"
    )
    with running(setup.proxy("kv_mm", *extra)) as door:
        pid = door.pid
        assert pid is not None
        print(f"  {'requests':>8s} {'VmRSS MiB':>10s} {'VmHWM MiB':>10s} {'index blocks':>13s} {'errors':>6s}")

        def sample(sent: int, errors: int) -> tuple[int, int, int]:
            kib, blocks = vm_kib(pid, "VmRSS"), predicted_blocks(door.url)
            print(f"  {sent:8d} {kib / 1024:10.1f} {vm_kib(pid, 'VmHWM') / 1024:10.1f} {blocks:13d} {errors:6d}")
            return sent, kib, blocks

        samples = [sample(0, 0)]
        errors = 0
        t0 = time.perf_counter()
        while samples[-1][0] < total:
            sent = samples[-1][0]
            n = min(step, total - sent)
            r = run_loop(
                door.url,
                lambda i, sent=sent: distinct_image(sent + i),
                concurrency=concurrency,
                n=n,
                duration=600,
            )
            errors += r.errors
            samples.append(sample(sent + n, r.errors))
        elapsed = time.perf_counter() - t0
    print(f"  {total} requests in {elapsed:.1f} s ({total / elapsed:.0f} req/s), {errors} errors")
    warm = next((s for s in samples if s[0] >= min(1000, total)), samples[-1])
    last = samples[-1]
    if last[0] <= warm[0]:
        return
    grew = (last[1] - warm[1]) * 1024
    print(
        f"  RSS after warm-up ({warm[0]} requests) {warm[1] / 1024:.1f} MiB, at the end ({last[0]})"
        f" {last[1] / 1024:.1f} MiB: {grew / 2**20:+.1f} MiB ({grew / (warm[1] * 1024) * 100:+.1f}%),"
        f" {grew / (last[0] - warm[0]):.0f} bytes per request"
    )
    mid = min(samples, key=lambda s: abs(s[0] - (warm[0] + last[0]) / 2))
    if warm[0] < mid[0] < last[0]:
        first = (mid[1] - warm[1]) * 1024 / (mid[0] - warm[0])
        second = (last[1] - mid[1]) * 1024 / (last[0] - mid[0])
        print(f"  bytes per request: {first:.0f} from {warm[0]} to {mid[0]}, {second:.0f} from {mid[0]} to {last[0]}")
    blocks = last[2] - warm[2]
    cap = capacity * len(setup.workers)
    if blocks > 0 and grew > 0:
        per_block = grew / blocks
        ceiling = max(cap - last[2], 0) * per_block / 2**20
        print(
            f"  the proxy's PredictedIndex holds {last[2]} blocks ({blocks} more than after warm-up, ~{per_block:.0f}"
            f" bytes of RSS each if all growth were the index); it is capped at {capacity} blocks per worker"
            f" ({cap} here), so at that rate RSS can grow ~{ceiling:.0f} MiB more, then stays flat."
        )
    if total >= MEMO_SIZE:
        print(f"  the image memos (ImageResolver, 2 x {MEMO_SIZE} entries) are full after {MEMO_SIZE} distinct images")
    elif blocks == 0:
        print(f"  the PredictedIndex is at its cap ({last[2]} blocks of {cap}): it no longer grows")
    print(flush=True)


# -- main ----------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="sequential requests per front door and kind")
    ap.add_argument("--warmup", type=int, default=200, help="sequential warm-up requests per front door and kind")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per capacity scenario")
    ap.add_argument("--concurrency", type=int, default=32, help="clients in the capacity test")
    ap.add_argument("--rss-requests", type=int, default=10000, help="distinct-image requests in the memory test")
    ap.add_argument("--rss-concurrency", type=int, default=16, help="clients in the memory test")
    ap.add_argument("--rss-step", type=int, default=1000, help="sample the proxy's RSS every this many requests")
    ap.add_argument(
        "--rss-index-capacity",
        type=int,
        default=None,
        help="--index-capacity-blocks of the memory test's proxy (default: the proxy's own default)",
    )
    ap.add_argument("--no-router", action="store_true", help="leave vllm-router out")
    ap.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer of workers and proxy (directory or tokenizer.json; 'generated': a byte-level BPE built here); "
        "default: the model's when cached, else the harness stand-in",
    )
    ap.add_argument(
        "--proxy-log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the harness proxy's --log-level (warning drops its per-request [ROUTING] record)",
    )
    ap.add_argument(
        "--phases",
        default="latency,capacity,memory",
        help="comma-separated subset of latency, capacity, memory (default: all three)",
    )
    args = ap.parse_args()
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    if not phases or phases - {"latency", "capacity", "memory"}:
        ap.error(f"--phases: expected a subset of latency,capacity,memory, got {args.phases!r}")

    t_start = time.perf_counter()
    allowed = sorted(os.sched_getaffinity(0))
    pin = len(allowed) >= 2
    server_cpus, client_cpus = ({allowed[0]}, {allowed[1]}) if pin else (None, None)
    log_dir = Path(tempfile.mkdtemp(prefix="mmharness-proxy-bench-"))
    tok_args: tuple[str, ...] = ()
    if args.tokenizer:
        tok = generated_tokenizer(log_dir / "tokenizer") if args.tokenizer == "generated" else args.tokenizer
        tok_args = ("--tokenizer", tok)
    with cpus(server_cpus):
        workers = start_workers(2, MODEL, log_dir, [*WORKER_ARGS, *tok_args])
    try:
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        router = None if args.no_router else router_binary()
        setup = Setup(workers, log_dir, server_cpus, router, ("--log-level", args.proxy_log_level, *tok_args))
        print(f"proxy overhead: 2 simulated workers, {MODEL}, {' '.join([*WORKER_ARGS, *tok_args])}")
        if pin:
            print(
                f"pinned: both workers and the front door under test on CPU {allowed[0]} (worker0 Cpus_allowed_list"
                f" {proc_status(workers[0].proc.pid, 'Cpus_allowed_list')}), the load generator (this process) on"
                f" CPU {allowed[1]}"
            )
        else:
            print("not pinned: fewer than two CPUs are available")
        print(
            f"harness proxy: --disable-log-requests --log-level {args.proxy_log_level}"
            f" ([ROUTING] record per request {'on' if args.proxy_log_level in ('debug', 'info') else 'off'});"
            f" logs in {log_dir}"
        )
        print(f"load average at start: {loadavg()}", flush=True)
        print()
        if "latency" in phases:
            phase_latency(setup, args.requests, args.warmup)
        if "capacity" in phases:
            phase_capacity(setup, args.concurrency, args.duration)
        if "memory" in phases:
            phase_memory(setup, args.rss_requests, args.rss_concurrency, args.rss_step, args.rss_index_capacity)
    finally:
        stop_workers(workers)
    print(f"load average at the end: {loadavg()}; total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
