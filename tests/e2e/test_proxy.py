"""The reference proxy in front of 2-4 simulated workers, all real processes on loopback."""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from safetensors.numpy import save_file

from harness.contract import RoutingRecord, records_for
from harness.mm.assets import AssetStore
from harness.sim.process import WorkerHandle, worker_env
from harness.stack.ports import allocate_ports, release_ports
from harness.stack.processes import ManagedProcess, spawn, wait_http_ready, wait_until
from tests.helpers import MODEL, data_url, image_message, png_bytes

pytestmark = pytest.mark.e2e
B = 16
WORKER_ARGS = ("--speedup", "0", "--kv-cache-memory-bytes", "1000000000", "--max-model-len", "8192")
GREEN, RED, BLUE = (0, 200, 0), (220, 0, 0), (0, 0, 230)


@dataclass
class Stack:
    url: str
    proxy: ManagedProcess
    workers: list[WorkerHandle]

    def log(self) -> str:
        return self.proxy.log_path.read_text()

    def routing(self, rid: str) -> RoutingRecord:
        wait_until(lambda: bool(records_for(self.log(), rid)), 5, what=f"routing record of {rid}")
        return records_for(self.log(), rid)[-1]

    def chat(self, messages: list[dict], rid: str | None = None, **kw) -> httpx.Response:
        headers = {"X-Request-Id": rid} if rid else {}
        body = {"model": kw.pop("model", MODEL), "messages": messages, **kw}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.fixture
def stack_factory(sim_workers, tmp_path: Path) -> Iterator:
    procs: list[tuple[ManagedProcess, int]] = []

    def make(
        n: int = 2,
        policy: str = "kv_mm",
        proxy_args=(),
        worker_args: tuple[str, ...] = WORKER_ARGS,
        per_worker_args=None,
    ) -> Stack:
        if per_worker_args:
            workers = [sim_workers(1, *worker_args, *per_worker_args[i])[0] for i in range(n)]
        else:
            workers = sim_workers(n, *worker_args)
        if callable(proxy_args):
            proxy_args = proxy_args(workers)
        (port,) = allocate_ports(1)
        argv = [
            sys.executable,
            "-m",
            "harness.proxy",
            "--model",
            MODEL,
            "--workers",
            *[w.url for w in workers],
            "--port",
            str(port),
            "--policy",
            policy,
            "--health-interval",
            "0.2",
            *proxy_args,
        ]
        proc = spawn("proxy", argv, tmp_path / "logs" / f"proxy-{port}.log", env=worker_env())
        procs.append((proc, port))
        wait_http_ready(f"http://127.0.0.1:{port}/health", proc, 30)
        stack = Stack(f"http://127.0.0.1:{port}", proc, workers)
        wait_until(
            lambda: all(w["healthy"] for w in httpx.get(f"{stack.url}/workers").json()),
            10,
            procs=[proc],
            what="all workers healthy",
        )
        return stack

    yield make
    for proc, port in procs:
        proc.terminate()
        release_ports([port])


def cached(r: httpx.Response) -> int:
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def full_hit(r: httpx.Response) -> int:
    return (r.json()["usage"]["prompt_tokens"] - 1) // B * B


def image_offset(stack: Stack, messages: list[dict]) -> int:
    r = httpx.post(f"{stack.workers[0].url}/v1/chat/completions/render", json={"model": MODEL, "messages": messages})
    return r.json()["features"]["mm_placeholders"]["image"][0]["offset"]


# -- routing -----------------------------------------------------------------------------------------------------
def test_kv_mm_colocates_repeats_and_separates_images(stack_factory) -> None:
    s = stack_factory(3, "kv_mm")
    assert "MM-aware KV routing enabled model=Qwen/Qwen3-VL-2B-Instruct block_size=16" in s.log()
    green = image_message(data_url(png_bytes(GREEN)))
    first = s.chat(green, "g1")
    second = s.chat(green, "g2")
    assert first.headers["x-served-by"] == second.headers["x-served-by"]
    assert cached(second) == full_hit(second)
    rec = s.routing("g2")
    assert rec.worker == second.headers["x-served-by"] and rec.overlap_blocks == rec.total_blocks > 0

    red = image_message(data_url(png_bytes(RED)))
    other = s.chat(red, "r1")
    assert "red" in other.json()["choices"][0]["message"]["content"]
    assert cached(other) == image_offset(s, red) // B * B  # no image block came from the cache
    rec = s.routing("r1")
    assert rec.overlap_blocks < rec.total_blocks
    # Free to go elsewhere: with equal load, new content goes to the worker with the least cached.
    assert other.headers["x-served-by"] != first.headers["x-served-by"]
    assert s.chat(red, "r2").headers["x-served-by"] == other.headers["x-served-by"]


def test_kv_text_colocates_different_images(stack_factory) -> None:
    s = stack_factory(2, "kv_text")
    assert "images are not in the routing key" in s.log()
    served = set()
    for i, colour in enumerate([GREEN, RED, BLUE]):
        r = s.chat(image_message(data_url(png_bytes(colour))), f"t{i}")
        served.add(r.headers["x-served-by"])
        if i:
            rec = s.routing(f"t{i}")
            # The degradation: the router believes a different image is a full cache hit...
            assert rec.overlap_blocks == rec.total_blocks
            # ...while the worker, which does key on the image, reports no image block cached.
            assert cached(r) < 32
    assert len(served) == 1


def test_round_robin_alternates(stack_factory) -> None:
    s = stack_factory(2, "round_robin")
    msgs = image_message(data_url(png_bytes(GREEN)))
    served = [s.chat(msgs).headers["x-served-by"] for _ in range(4)]
    assert served[0] != served[1] and served[0::2] == [served[0]] * 2 and served[1::2] == [served[1]] * 2


def test_request_ids_and_streaming(stack_factory) -> None:
    s = stack_factory(2, "kv_mm")
    r = s.chat([{"role": "user", "content": "hello"}])
    generated = r.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    kept = s.chat([{"role": "user", "content": "hello"}], "client-id-1")
    assert kept.headers["x-request-id"] == "client-id-1"
    worker = next(w for w in s.workers if w.name == kept.headers["x-served-by"])
    wait_until(lambda: "request_id=client-id-1" in worker.proc.log_path.read_text(), 5, what="worker log")
    proxy_lines = [ln for ln in s.log().splitlines() if "client-id-1" in ln]
    assert any("[ROUTING]" in ln for ln in proxy_lines) and any("status=200" in ln for ln in proxy_lines)

    c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
    chunks = list(
        c.chat.completions.create(
            model=MODEL,
            messages=image_message(data_url(png_bytes(GREEN))),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "green" in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert len(chunks) > 3 and chunks[-1].usage is not None


def test_metrics_count_decisions(stack_factory) -> None:
    s = stack_factory(2, "kv_mm")
    msgs = image_message(data_url(png_bytes(GREEN)))
    served = [s.chat(msgs).headers["x-served-by"] for _ in range(3)]
    text = httpx.get(f"{s.url}/metrics").text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("harness_proxy_routing_decisions_total") and f'worker="{served[0]}"' in ln
    )
    assert 'policy="kv_mm"' in line and float(line.rsplit(" ", 1)[1]) == 3
    hit_rate = next(ln for ln in text.splitlines() if ln.startswith("harness_proxy_predicted_hit_rate "))
    assert 0.5 < float(hit_rate.rsplit(" ", 1)[1]) < 1.0  # two of three requests predicted as full hits
    assert re.search(r'harness_proxy_worker_healthy\{worker="[^"]+"\} 1.0', text)


def test_kv_events_feed_the_index(stack_factory) -> None:
    ports = allocate_ports(2)
    try:
        per_worker = [
            (
                "--kv-events-config",
                json.dumps({"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{p}"}),
            )
            for p in ports
        ]

        def events_args(workers: list[WorkerHandle]) -> tuple[str, ...]:
            return ("--kv-events", *[f"{w.url}=tcp://127.0.0.1:{p}" for w, p in zip(workers, ports, strict=True)])

        s = stack_factory(2, "kv_mm", per_worker_args=per_worker, proxy_args=events_args)
        msgs = image_message(data_url(png_bytes(GREEN)))

        def event_blocks() -> int:
            return sum(w["event_blocks"] or 0 for w in httpx.get(f"{s.url}/workers").json())

        # ZMQ subscriptions join asynchronously: send until the proxy has seen the worker's BlockStored events.
        wait_until(
            lambda: s.chat(msgs).status_code == 200 and event_blocks() > 0,
            10,
            interval_s=0.2,
            what="BlockStored events reach the proxy",
        )
        for w in s.workers:
            assert httpx.post(f"{w.url}/reset_prefix_cache").json()["success"]
        wait_until(lambda: event_blocks() == 0, 10, what="AllBlocksCleared reaches the proxy")
        assert re.search(r"harness_proxy_kv_events_total\{[^}]*\} [1-9]", httpx.get(f"{s.url}/metrics").text)
    finally:
        release_ports(ports)


# -- LoRA ----------------------------------------------------------------------------------------------------------
def make_adapter(
    root: Path, name: str, *, base: str = MODEL, rank: int = 8, extra_keys: tuple[str, ...] = (), seed: int = 0
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(
        json.dumps(
            {"r": rank, "lora_alpha": 16, "base_model_name_or_path": base, "target_modules": ["q_proj", "v_proj"]}
        )
    )
    rng = np.random.default_rng(seed)
    prefix = "base_model.model.model.layers.0.self_attn"
    tensors = {
        f"{prefix}.q_proj.lora_A.weight": rng.standard_normal((rank, 64), dtype=np.float32),
        f"{prefix}.q_proj.lora_B.weight": np.zeros((64, rank), dtype=np.float32),
    }
    for key in extra_keys:
        tensors[key] = np.zeros((rank, 64), dtype=np.float32)
    save_file(tensors, str(d / "adapter_model.safetensors"))
    return d


def lora_stack(stack_factory, adapters: Path, workers: int) -> Stack:
    """Workers that accept runtime LoRA (rank <= 16) behind a proxy serving ``adapters`` with 2 slots a worker."""
    return stack_factory(
        workers,
        "kv_mm",
        worker_args=(*WORKER_ARGS, "--enable-lora", "--max-lora-rank", "16"),
        proxy_args=("--adapter-dir", str(adapters), "--max-loras-per-worker", "2"),
    )


def asset_stack(stack_factory, assets: AssetStore, workers: int) -> Stack:
    """Workers and proxy sharing one run-scoped asset directory (mmfile:// references)."""
    return stack_factory(
        workers,
        "kv_mm",
        worker_args=(*WORKER_ARGS, "--asset-dir", str(assets.root)),
        proxy_args=("--asset-dir", str(assets.root)),
    )


def served_adapters(w: WorkerHandle) -> set[str]:
    """The names the worker lists its adapters under: the proxy registers ``<name>@<digest12>``."""
    return {c["id"] for c in httpx.get(f"{w.url}/v1/models").json()["data"] if c["parent"]}


def worker_adapters(w: WorkerHandle) -> set[str]:
    """The user-facing names of the worker's adapters (each served name checked for its content digest)."""
    served = served_adapters(w)
    assert all(re.fullmatch(r"[\w.-]+@[0-9a-f]{12}", name) for name in served), served
    return {name.partition("@")[0] for name in served}


def test_lora_cold_load_affinity_lru_and_reregister(stack_factory, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    for i, name in enumerate(("style-a", "style-b", "style-c")):
        make_adapter(adapters, name, seed=i)
    s = lora_stack(stack_factory, adapters, workers=2)
    msgs = image_message(data_url(png_bytes(GREEN)))
    first = s.chat(msgs, "lora-1", model="style-a")
    assert first.status_code == 200, first.text
    assert first.json()["model"] == "style-a"
    holder = next(w for w in s.workers if w.name == first.headers["x-served-by"])
    assert worker_adapters(holder) == {"style-a"}
    cold = [ln for ln in s.log().splitlines() if "[LORA] cold load" in ln]
    assert len(cold) == 1 and "request_id=lora-1" in cold[0] and "adapter=style-a" in cold[0]
    for phase in ("resolve_ms=", "validate_ms=", "load_ms="):
        assert phase in cold[0]

    # Affinity: a different prompt on the same adapter goes to the holder, with no second cold load.
    again = s.chat([{"role": "user", "content": "something else entirely"}], "lora-2", model="style-a")
    assert again.headers["x-served-by"] == holder.name
    assert sum("[LORA] cold load" in ln for ln in s.log().splitlines()) == 1

    # More adapters than slots (2 per worker): no worker ever holds more than its slots (the eviction order
    # itself is pinned down by test_lora_lru_evicts_least_recently_used).
    for name in ("style-b", "style-c", "style-b", "style-a"):
        assert s.chat(msgs, model=name).status_code == 200
    for w in s.workers:
        assert len(worker_adapters(w)) <= 2
    # Re-register: the worker loses the adapter behind the proxy's back (as after a restart).
    owner = next(w for w in s.workers if "style-a" in worker_adapters(w))
    (served,) = (n for n in served_adapters(owner) if n.startswith("style-a@"))
    assert httpx.post(f"{owner.url}/v1/unload_lora_adapter", json={"lora_name": served}).status_code == 200
    r = s.chat(msgs, "lora-404", model="style-a")
    assert r.status_code == 200, r.text
    assert "re-registering" in s.log()


def test_lora_validation_errors_are_typed(stack_factory, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    make_adapter(adapters, "other-base", base="meta-llama/Llama-3.1-8B")
    make_adapter(adapters, "too-big", rank=32)
    make_adapter(
        adapters, "dora", extra_keys=("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",)
    )
    make_adapter(adapters, "vision", extra_keys=("base_model.model.visual.blocks.0.attn.qkv.lora_A.weight",))
    s = stack_factory(
        1,
        "kv_mm",
        worker_args=(*WORKER_ARGS, "--enable-lora", "--max-lora-rank", "16"),
        proxy_args=("--adapter-dir", str(adapters), "--max-lora-rank", "16"),
    )
    msgs = [{"role": "user", "content": "hi"}]
    cases = {
        "other-base": "trained for base model 'meta-llama/Llama-3.1-8B'",
        "too-big": "rank 32 exceeds",
        "dora": "DoRA",
        "vision": "vision tower",
    }
    for name, reason in cases.items():
        r = s.chat(msgs, model=name)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert name in err["message"] and MODEL in err["message"] and reason in err["message"]
        assert err["type"] == "AdapterValidationError" and err["param"] == "model"
    cards = {c["id"]: c for c in httpx.get(f"{s.url}/v1/models").json()["data"]}
    assert cards[MODEL]["parent"] is None and {"created", "max_model_len", "permission"} <= set(cards[MODEL])
    assert cards["dora"]["parent"] == MODEL and cards["dora"]["root"] == str(adapters / "dora")
    unknown = s.chat(msgs, model="no-such-adapter")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "NotFoundError"
    assert worker_adapters(s.workers[0]) == set()  # nothing invalid ever reached a worker


# -- faults ---------------------------------------------------------------------------------------------------------
def test_failover_when_a_worker_is_killed_under_load(stack_factory) -> None:
    # Real-time steps: a 1000-token answer runs for seconds, so the victim dies with it certainly in flight
    # (waited for on the victim's own gauge, not hoped for), among short requests that keep coming.
    s = stack_factory(2, "round_robin", worker_args=("--speedup", "1", *WORKER_ARGS[2:]))
    msgs = [{"role": "user", "content": "tell me a story"}]
    assert s.chat(msgs).status_code == 200
    victim = s.workers[0]

    def running(url: str) -> float:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        return sum(float(m) for m in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M))

    with ThreadPoolExecutor(8) as pool:
        # Round robin: two requests in a row reach both workers, so one long answer is on the victim.
        long = [pool.submit(s.chat, msgs, f"long-{i}", max_tokens=1000, ignore_eos=True) for i in range(2)]
        wait_until(lambda: running(victim.url) >= 1, 10, what="a long request in flight on the victim")
        victim.proc.signal_group(signal.SIGKILL)
        statuses = list(pool.map(lambda i: s.chat(msgs, f"load-{i}").status_code, range(30)))
        statuses += [f.result().status_code for f in long]
    assert statuses == [200] * 32
    retried = [ln for ln in s.log().splitlines() if "retrying elsewhere" in ln]
    assert any(re.search(r"request_id=long-[01] ", ln) for ln in retried), retried  # re-sent, not lost
    wait_until(
        lambda: not next(w for w in httpx.get(f"{s.url}/workers").json() if w["url"] == victim.url)["healthy"],
        5,
        what="victim marked unhealthy",
    )
    assert s.chat(msgs).headers["x-served-by"] == s.workers[1].name


def test_crashing_worker_loses_no_request(stack_factory) -> None:
    s = stack_factory(2, "round_robin", per_worker_args=[("--crash-after", "3"), ()])
    msgs = [{"role": "user", "content": "hello"}]
    statuses = [s.chat(msgs, f"c{i}").status_code for i in range(12)]
    assert statuses == [200] * 12
    assert s.workers[0].proc.poll() == 70
    assert "retrying elsewhere" in s.log()


def test_worker_error_maps_to_502_naming_worker(stack_factory) -> None:
    s = stack_factory(1, "round_robin", per_worker_args=[("--error-rate", "1.0")])
    r = s.chat([{"role": "user", "content": "hi"}])
    assert r.status_code == 502
    err = r.json()["error"]
    assert s.workers[0].name in err["message"] and "500" in err["message"] and err["type"] == "BadGatewayError"
    assert s.workers[0].url not in err["message"]  # the worker by name only, never its internal URL


def hammer(s: Stack, n: int, threads: int = 6) -> list[int]:
    msgs = [{"role": "user", "content": "hello"}]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: s.chat(msgs, f"h{i}").status_code, range(n)))


def test_worker_with_errors_loses_no_request(stack_factory) -> None:
    s = stack_factory(3, "round_robin", per_worker_args=[("--error-rate", "0.2", "--seed", "7"), (), ()])
    statuses = hammer(s, 100)
    assert statuses == [200] * 100
    text = httpx.get(f"{s.url}/metrics").text
    retried = re.search(r'harness_proxy_retries_total\{reason="worker_error"\} (\d+)', text)
    assert retried and int(retried[1]) > 0  # the faulty worker did fail requests, and each was re-sent


def test_killed_worker_loses_no_request(stack_factory) -> None:
    s = stack_factory(3, "round_robin", per_worker_args=[("--crash-after", "10"), (), ()])
    statuses = hammer(s, 100)
    assert statuses == [200] * 100
    assert s.workers[0].proc.poll() == 70
    assert "retrying elsewhere" in s.log()


def test_no_healthy_worker_is_503(stack_factory) -> None:
    s = stack_factory(1, "kv_mm")
    s.workers[0].proc.terminate()
    wait_until(lambda: httpx.get(f"{s.url}/health").status_code == 503, 10, what="proxy health 503")
    r = s.chat([{"role": "user", "content": "hi"}])
    assert r.status_code == 503 and "no healthy worker" in r.json()["error"]["message"]
    assert s.proxy.alive


# -- bad input and payload modes --------------------------------------------------------------------------------
def test_bad_input_gets_4xx(stack_factory, tmp_path: Path) -> None:
    assets = AssetStore(tmp_path / "assets").ensure()
    s = asset_stack(stack_factory, assets, workers=2)
    url = f"{s.url}/v1/chat/completions"
    r = httpx.post(url, content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "Invalid JSON" in r.json()["error"]["message"]
    assert s.chat([{"role": "user", "content": "x"}], model="ghost-model").status_code == 404
    bad_image = s.chat(image_message("data:image/png;base64,aGVsbG8="))
    assert bad_image.status_code == 400 and "cannot identify" in bad_image.json()["error"]["message"]
    remote = s.chat(image_message("http://198.51.100.7/cat.png"))
    assert remote.status_code == 400 and "could not be fetched" in remote.json()["error"]["message"]
    escape = s.chat(image_message("mmfile://../../etc/passwd"))
    assert escape.status_code == 400 and "asset reference" in escape.json()["error"]["message"]
    wrong_part = s.chat([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "x"}}]}])
    assert wrong_part.status_code == 400 and wrong_part.json()["error"]["param"] == "messages[0].content[0].type"
    assert s.proxy.alive and httpx.get(f"{s.url}/health").status_code == 200


def test_asset_references_resolve_and_hash_like_inline(stack_factory, tmp_path: Path) -> None:
    assets = AssetStore(tmp_path / "assets").ensure()
    s = asset_stack(stack_factory, assets, workers=2)
    data = png_bytes(BLUE)
    ref = assets.put(data)
    by_ref = s.chat(image_message(ref), "ref-1")
    assert by_ref.status_code == 200 and "blue" in by_ref.json()["choices"][0]["message"]["content"]
    inline = s.chat(image_message(data_url(data)), "inline-1")
    assert inline.headers["x-served-by"] == by_ref.headers["x-served-by"]
    assert cached(inline) == full_hit(inline)
    assert s.routing("inline-1").overlap_blocks == s.routing("inline-1").total_blocks


def test_derived_artifacts_are_swept_but_sources_kept(stack_factory, tmp_path: Path) -> None:
    import os
    import subprocess

    assets = AssetStore(tmp_path / "assets").ensure()
    s = asset_stack(stack_factory, assets, workers=1)
    ref = assets.put(png_bytes(GREEN))
    assert s.chat(image_message(ref)).status_code == 200
    derived = list(assets.derived.glob("*.facts.json"))
    assert derived, "resolving an mmfile:// reference records its measurements as a derived artifact"
    for path in derived:
        os.utime(path, (1, 1))  # ancient
    out = subprocess.run(
        [sys.executable, "-m", "harness.cli", "assets", "sweep", str(assets.root), "--max-age", "60"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"removed {len(derived)} derived artifact(s)" in out and "1 source image(s) kept" in out
    assert not list(assets.derived.glob("*.facts.json"))
    assert assets.path_of(ref).exists()
    again = s.chat(image_message(ref))
    assert again.status_code == 200 and "green" in again.json()["choices"][0]["message"]["content"]


def test_lora_lru_evicts_least_recently_used(stack_factory, tmp_path: Path) -> None:
    adapters = tmp_path / "adapters"
    for i, name in enumerate(("lru-a", "lru-b", "lru-c")):
        make_adapter(adapters, name, seed=i)
    s = lora_stack(stack_factory, adapters, workers=1)
    w = s.workers[0]
    msgs = [{"role": "user", "content": "hello adapters"}]
    for name in ("lru-a", "lru-b", "lru-a"):  # a is now the most recently used, b the least
        assert s.chat(msgs, model=name).status_code == 200
    assert worker_adapters(w) == {"lru-a", "lru-b"}
    assert s.chat(msgs, model="lru-c").status_code == 200
    assert worker_adapters(w) == {"lru-a", "lru-c"}
    assert "[LORA] evicted adapter=lru-b" in s.log()
    assert sum("[LORA] cold load" in ln for ln in s.log().splitlines()) == 3


def test_worker_dying_mid_stream_ends_the_stream_with_an_error(stack_factory) -> None:
    s = stack_factory(
        1, "kv_mm", worker_args=("--speedup", "1", "--kv-cache-memory-bytes", "1000000000", "--max-model-len", "8192")
    )
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    events: list[str] = []
    with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(line)
            if len(events) == 3:  # streaming is under way: kill the worker
                s.workers[0].proc.signal_group(signal.SIGKILL)
                break
        events.extend(line for line in lines if line.startswith("data: "))
    assert events[-1] != "data: [DONE]"
    error = json.loads(events[-1][len("data: ") :])["error"]
    assert error["code"] == 502 and "mid-stream" in error["message"] and s.workers[0].name in error["message"]
    health = httpx.get(f"{s.url}/workers").json()[0]["healthy"]
    assert health is False
    assert "Traceback" not in s.log()


def test_client_leaving_mid_stream_does_not_blame_the_worker(stack_factory) -> None:
    s = stack_factory(1, "kv_mm", worker_args=("--speedup", "1", *WORKER_ARGS[2:]))
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "go on"}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{s.url}/v1/chat/completions", json=body, timeout=30) as r:
        for n, _ in enumerate(r.iter_lines()):
            if n > 5:
                break  # hang up mid-stream
    wait_until(lambda: "client disconnected mid-stream" in s.log(), 10, what="the proxy noticing the client left")
    # The worker aborts the orphaned request and stays in rotation.
    wait_until(
        lambda: 'finished_reason="abort"' in httpx.get(f"{s.workers[0].url}/metrics").text,
        10,
        what="the worker to abort the request",
    )
    assert httpx.get(f"{s.url}/workers").json()[0]["healthy"] is True
    assert s.chat([{"role": "user", "content": "still there?"}]).status_code == 200
