"""vllm-router (PyPI ``vllm-router``) with ``--policy cache_aware`` in front of two simulated workers."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import httpx
import openai
import pytest

from harness.stack.ports import allocate_ports, release_ports
from harness.stack.processes import spawn, wait_http_ready
from tests.helpers import MODEL, data_url, image_message, png_bytes

pytestmark = [pytest.mark.e2e, pytest.mark.routers]


def router_binary() -> str | None:
    local = Path(sys.executable).parent / "vllm-router"
    return str(local) if local.exists() else shutil.which("vllm-router")


@pytest.fixture
def vllm_router(sim_workers, tmp_path: Path):
    binary = router_binary()
    if binary is None:
        pytest.skip("vllm-router is not installed")
    workers = sim_workers(2, "--speedup", "0", "--kv-cache-memory-bytes", "1000000000", "--max-model-len", "8192")
    port, metrics_port = allocate_ports(2)
    argv = [
        binary,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--worker-urls",
        *[w.url for w in workers],
        "--policy",
        "cache_aware",
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        str(metrics_port),
        "--worker-startup-check-interval",
        "1",
        "--log-level",
        "info",
    ]
    proc = spawn("vllm-router", argv, tmp_path / "logs" / "vllm-router.log")
    try:
        wait_http_ready(f"http://127.0.0.1:{port}/health", proc, 60)
        yield f"http://127.0.0.1:{port}", workers
    finally:
        proc.terminate()
        release_ports([port, metrics_port])


def test_cache_aware_serves_end_to_end(vllm_router) -> None:
    url, workers = vllm_router
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)
    msgs = image_message(data_url(png_bytes((0, 200, 0))))
    first = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=msgs, max_tokens=16, extra_headers={"X-Request-Id": "via-router-1"}
    )
    assert first.headers["x-request-id"] == "via-router-1"
    served = first.headers["x-served-by"]
    assert served in {w.name for w in workers}
    body = first.parse()
    assert "green" in body.choices[0].message.content

    second = c.chat.completions.with_raw_response.create(model=MODEL, messages=msgs, max_tokens=16)
    # Sequential repeats land on the worker that has the prefix, which reports the hit.
    assert second.headers["x-served-by"] == served
    usage = second.parse().usage
    assert usage.prompt_tokens_details.cached_tokens == (usage.prompt_tokens - 1) // 16 * 16

    chunks = list(
        c.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=16, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "green" in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == usage.prompt_tokens

    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    assert models["data"][0]["id"] == MODEL
