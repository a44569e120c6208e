"""The load generator's own ceiling: max req/s, streaming, with TTFT and ITL measured, on one core.

A null loopback server (a raw asyncio protocol answering every request with the same precomputed SSE stream:
role chunk, ``--tokens`` content chunks, usage chunk, ``[DONE]``) runs pinned to CPU 1; each client runs pinned
to CPU 0, at concurrency 64 by default:

* ``harness.load`` (this project's generator, closed loop, one process);
* a plain aiohttp loop that measures only TTFT (the floor any Python generator pays);
* aiperf from PyPI, installed by this script into a throwaway venv under /tmp (never vllm); its column says
  why when it cannot be installed or run.

Then ``harness.load`` runs open loop at the target rate (5x aiperf's figure, or 1,000 req/s without one) to
show the dispatch-lag warning stays silent below the ceiling. Figures are printed, never asserted.

    python benchmarks/generator_ceiling.py [--concurrency 64] [--requests 20000] [--tokens 16] [--no-aiperf]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import orjson

from harness.load.generator import LoadShape, Target, run_load
from harness.load.stats import run_stats
from harness.load.workloads import RequestSpec, TurnSpec
from harness.stack.ports import allocate_ports, release_ports
from harness.stack.processes import spawn, wait_http_ready

MODEL = "null-model"
AIPERF_VENV = Path(os.environ.get("MMHARNESS_AIPERF_VENV") or Path(tempfile.gettempdir()) / "mmharness-aiperf-venv")


# -- the null server ---------------------------------------------------------------------------------------------
def sse_response(tokens: int) -> bytes:
    def ev(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"

    base = {"id": "chatcmpl-null", "object": "chat.completion.chunk", "created": 0, "model": MODEL}
    body = ev({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for _ in range(tokens):
        body += ev({**base, "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}]})
    usage = {"prompt_tokens": 32, "completion_tokens": tokens, "total_tokens": 32 + tokens,
             "prompt_tokens_details": {"cached_tokens": 0}}
    body += ev({**base, "choices": [], "usage": usage}) + b"data: [DONE]\n\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nX-Served-By: null0\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    return head + body


HEALTH = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
MODELS = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "null"}]})
MODELS_RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(MODELS)).encode() + (
    b"\r\n\r\n" + MODELS
)


class NullProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only: enough for every client here, and nearly free."""

    response = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            length = 0
            i = head.find(b"content-length:")
            if i >= 0:
                length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None].strip())
            total = end + 4 + length
            if len(self.buf) < total:
                return
            first = head.split(b"\r\n", 1)[0]
            self.buf = self.buf[total:]
            if b"/v1/models" in first:
                self.transport.write(MODELS_RESP)
            elif first.startswith(b"get"):
                self.transport.write(HEALTH)
            else:
                self.transport.write(self.response)


def serve(port: int, tokens: int) -> None:
    import uvloop

    NullProtocol.response = sse_response(tokens)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(NullProtocol, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# -- clients --------------------------------------------------------------------------------------------------------
def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


def harness_closed(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    import uvloop

    reqs = [RequestSpec(i, (TurnSpec(text="hello there"),), 16) for i in range(requests)]
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16,
                         "stream": True, "stream_options": {"include_usage": True}})
    res = uvloop.run(run_load(reqs, lambda r: body, Target((url,)), LoadShape(concurrency=concurrency)))
    s = run_stats(res.records)
    return {
        "rps": s.request_throughput,
        "ttft_measured": s.ttft.count,
        "itl_measured": s.itl.count,
        "errors": s.error_count,
        "client_bound": res.client_bound,
    }


def harness_open(url: str, rate: float, seconds: float) -> dict[str, Any]:
    import uvloop

    n = int(rate * seconds)
    reqs = [RequestSpec(i, (TurnSpec(text="hello there"),), 16) for i in range(n)]
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16,
                         "stream": True, "stream_options": {"include_usage": True}})
    shape = LoadShape(mode="open", rate=rate, arrival="poisson")
    res = uvloop.run(run_load(reqs, lambda r: body, Target((url,)), shape))
    s = run_stats(res.records)
    return {"rps": s.request_throughput, "errors": s.error_count, "client_bound": res.client_bound,
            "dispatch_lag_p99_ms": s.dispatch_lag.p(99.0) * 1000, "cpu": res.cpu_fraction}


def plain_aiohttp(url: str, concurrency: int, requests: int) -> dict[str, Any]:
    """The simplest streaming loop that still measures TTFT at the first content chunk."""
    import uvloop

    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 16,
                         "stream": True})
    ttfts: list[float] = []

    async def main() -> float:
        left = requests
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def client() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    t0 = time.perf_counter()
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                        first = None
                        async for line in resp.content:
                            if first is None and line.startswith(b"data: {") and b'"content":" ' in line:
                                first = time.perf_counter() - t0
                        if first is not None:
                            ttfts.append(first)

            t = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return time.perf_counter() - t

    elapsed = uvloop.run(main())
    return {"rps": len(ttfts) / elapsed}


# -- aiperf -----------------------------------------------------------------------------------------------------------
def aiperf_install() -> tuple[Path | None, str]:
    exe = AIPERF_VENV / "bin" / "aiperf"
    if exe.exists():
        return exe, "aiperf " + _aiperf_version()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(AIPERF_VENV)], check=True, capture_output=True, timeout=120)
        r = subprocess.run([str(AIPERF_VENV / "bin" / "pip"), "install", "--quiet", "aiperf"],
                           capture_output=True, text=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"not installable ({type(exc).__name__})"
    if r.returncode != 0 or not exe.exists():
        last = (r.stderr.strip().splitlines() or ["pip failed"])[-1][:80]
        return None, f"not installable: {last}"
    return exe, "aiperf " + _aiperf_version()


def _aiperf_version() -> str:
    r = subprocess.run([str(AIPERF_VENV / "bin" / "python"), "-c",
                        "from importlib.metadata import version; print(version('aiperf'))"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip() or "?"


TOKENIZER_SCRIPT = """
import sys, string
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
vocab = {"[UNK]": 0, "[BOS]": 1, "[EOS]": 2}
for a in string.ascii_lowercase:
    for b in string.ascii_lowercase:
        vocab[a + b] = len(vocab)
tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")
fast.save_pretrained(sys.argv[1])
"""


def local_tokenizer() -> Path:
    """aiperf needs a tokenizer; its 'builtin' one downloads a BPE file. A tiny word-piece tokenizer made here
    keeps the comparison offline (prompt contents do not matter to a null server)."""
    path = AIPERF_VENV / "null-tokenizer"
    if not (path / "tokenizer.json").exists():
        subprocess.run([str(AIPERF_VENV / "bin" / "python"), "-c", TOKENIZER_SCRIPT, str(path)], check=True,
                       capture_output=True, timeout=120)
    return path


def aiperf_run(exe: Path, url: str, concurrency: int, requests: int) -> tuple[float | None, str]:
    art = Path(tempfile.mkdtemp(prefix="mmharness-aiperf-"))
    try:
        tokenizer = str(local_tokenizer())
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"no offline tokenizer ({type(exc).__name__})"
    cmd = [
        "taskset", "-c", "0", str(exe), "profile", "--model", MODEL, "--url", url.rsplit("/v1/", 1)[0],
        "--endpoint-type", "chat", "--streaming", "--concurrency", str(concurrency),
        "--request-count", str(requests), "--prompt-input-tokens-mean", "8", "--output-tokens-mean", "16",
        "--artifact-dir", str(art), "--ui-type", "none", "--tokenizer", tokenizer,
    ]
    if shutil.which("taskset") is None:
        cmd = cmd[3:]
    # A local tokenizer path needs no hub; aiperf's offline mode would treat the path as a cached repo id.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    for path in art.rglob("*aiperf*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        found = _find(data, "request_throughput")
        if found is not None:
            return found, ""
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no export file"]
    return None, f"run failed: {tail[0][:100]}"


def _find(obj: Any, key: str) -> float | None:
    if isinstance(obj, dict):
        if key in obj:
            v = obj[key]
            if isinstance(v, dict):
                v = v.get("avg")
            if isinstance(v, (int, float)):
                return float(v)
        for v in obj.values():
            got = _find(v, key)
            if got is not None:
                return got
    if isinstance(obj, list):
        for v in obj:
            got = _find(v, key)
            if got is not None:
                return got
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--no-aiperf", action="store_true")
    p.add_argument("--aiperf-requests", type=int, default=3000)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        pin(1)
        serve(args.serve, args.tokens)
        return 0
    (port,) = allocate_ports(1)
    log = Path(tempfile.mkdtemp(prefix="mmharness-null-")) / "null.log"
    server = spawn("null-server", [sys.executable, __file__, "--serve", str(port), "--tokens", str(args.tokens)], log)
    try:
        wait_http_ready(f"http://127.0.0.1:{port}/health", server, 30)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        pin(0)
        print(f"null server on CPU 1, clients on CPU 0, concurrency {args.concurrency}, {args.tokens} tokens/stream")
        ours = harness_closed(url, args.concurrency, args.requests)
        plain = plain_aiohttp(url, args.concurrency, args.requests)
        aiperf_rps, aiperf_note = None, "skipped (--no-aiperf)"
        if not args.no_aiperf:
            exe, label = aiperf_install()
            if exe is None:
                aiperf_note = label
            else:
                aiperf_rps, err = aiperf_run(exe, url, args.concurrency, args.aiperf_requests)
                aiperf_note = label if aiperf_rps is not None else f"{label}: {err}"
        print()
        print("| client (one core, streaming) | req/s | measured |")
        print("|---|---|---|")
        print(f"| harness.load (closed loop) | {ours['rps']:,.0f} | TTFT x{ours['ttft_measured']}, ITL "
              f"x{ours['itl_measured']}, errors {ours['errors']} |")
        print(f"| plain aiohttp loop | {plain['rps']:,.0f} | TTFT only |")
        aiperf_cell = f"{aiperf_rps:,.0f}" if aiperf_rps is not None else "-"
        print(f"| aiperf | {aiperf_cell} | {aiperf_note} |")
        if aiperf_rps:
            print(f"\nharness.load / aiperf = {ours['rps'] / aiperf_rps:.1f}x (target >= 5x)")
        print(f"at its ceiling the client is the bottleneck by construction: {ours['client_bound']}")
        target = 5 * aiperf_rps if aiperf_rps else 1000.0
        target = min(target, 0.8 * ours["rps"])
        op = harness_open(url, target, 5.0)
        verdict = "no warning" if not op["client_bound"] else f"WARNING: {op['client_bound']}"
        print(f"open loop at {target:,.0f} req/s (Poisson): achieved {op['rps']:,.0f} req/s, dispatch lag p99 "
              f"{op['dispatch_lag_p99_ms']:.2f} ms, client CPU {op['cpu']:.0%}: {verdict}")
    finally:
        server.terminate()
        release_ports([port])
    return 0


if __name__ == "__main__":
    sys.exit(main())
