"""The simulated worker as a real process on loopback, driven over HTTP (the official openai client where it
applies). Every endpoint, the cache rules as a client sees them, bad input and fault flags."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import openai
import pytest

from harness.gpu.simulated import SimGpuRegistry
from harness.mm.hashing import DEFAULT_BLOCK_SIZE
from harness.stack.processes import ProcessExitedError, wait_until
from tests.helpers import MODEL, data_url, image_message, noise_png, png_bytes

pytestmark = pytest.mark.e2e
B = DEFAULT_BLOCK_SIZE
FAST = ("--speedup", "0", "--kv-cache-memory-bytes", "1000000000", "--max-model-len", "8192")
GREEN, RED = (0, 200, 0), (220, 0, 0)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def chat(url: str, messages: list[dict], **kw) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": messages, **kw}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def full_hit(resp: dict) -> int:
    """Cached tokens of a fully cached prompt: every full block but the one holding the last token."""
    return (resp["usage"]["prompt_tokens"] - 1) // B * B


def cached(resp: dict) -> int:
    return resp["usage"]["prompt_tokens_details"]["cached_tokens"]


def assert_error(r: httpx.Response, status: int, *, contains: str = "") -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    assert err["code"] == status
    assert contains in err["message"]
    return err


@pytest.fixture
def worker(sim_workers):
    return sim_workers(1, *FAST)[0]


# -- serving ---------------------------------------------------------------------------------------------------
def test_image_answer_cache_hit_and_headers(worker) -> None:
    c = client(worker.url)
    msgs = image_message(data_url(png_bytes(GREEN)))
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=msgs, max_tokens=32, extra_headers={"X-Request-Id": "req-green-1"}
    )
    assert raw.headers["x-request-id"] == "req-green-1"
    assert raw.headers["x-served-by"] == worker.name
    first = raw.parse()
    assert "green" in first.choices[0].message.content
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # 512x512 on Qwen3-VL: smart_resize keeps 512x512 -> (512/32)^2 = 256 placeholder tokens.
    assert first.usage.prompt_tokens > 256

    second = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=32)
    p = second.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens == (p - 1) // B * B
    assert second.choices[0].message.content == first.choices[0].message.content


def test_different_image_misses_from_first_image_block(worker) -> None:
    tok = httpx.post(
        f"{worker.url}/v1/chat/completions/render",
        json={"model": MODEL, "messages": image_message(data_url(png_bytes(GREEN)))},
    ).json()
    image_offset = tok["features"]["mm_placeholders"]["image"][0]["offset"]
    chat(worker.url, image_message(data_url(png_bytes(GREEN))))
    other = chat(worker.url, image_message(data_url(png_bytes(RED))))
    assert "red" in other["choices"][0]["message"]["content"]
    # Blocks wholly before the image may hit; the block holding the first image token must not.
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == image_offset // B * B
    # And the first image is still cached (the miss did not evict it).
    again = chat(worker.url, image_message(data_url(png_bytes(GREEN))))
    assert cached(again) == full_hit(again)


def test_same_file_by_url_and_data_url_hits(sim_workers, image_server) -> None:
    w = sim_workers(1, *FAST, "--allowed-media-hosts", image_server.host_port)[0]
    data = png_bytes((0, 0, 230))
    url = image_server.add("blue.png", data)
    by_url = chat(w.url, image_message(url))
    assert "blue" in by_url["choices"][0]["message"]["content"]
    by_data = chat(w.url, image_message(data_url(data)))
    assert (
        by_data["usage"]["prompt_tokens_details"]["cached_tokens"] == (by_data["usage"]["prompt_tokens"] - 1) // B * B
    )


def test_reencoded_image_misses_but_uuid_hits(worker) -> None:
    png, jpeg = png_bytes(GREEN), png_bytes(GREEN, fmt="JPEG")
    chat(worker.url, image_message(data_url(png)))
    reenc = chat(worker.url, image_message(data_url(jpeg, "image/jpeg")))
    assert reenc["usage"]["prompt_tokens_details"]["cached_tokens"] < 32
    chat(worker.url, image_message(data_url(png), uuid="asset-42"))
    same_uuid = chat(worker.url, image_message(data_url(jpeg, "image/jpeg"), uuid="asset-42"))
    assert same_uuid["usage"]["prompt_tokens_details"]["cached_tokens"] > 256


def test_streaming_chat_with_usage(worker) -> None:
    c = client(worker.url)
    msgs = image_message(data_url(png_bytes(GREEN)))
    c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=32)
    chunks = list(
        c.chat.completions.create(
            model=MODEL, messages=msgs, max_tokens=32, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert "green" in text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage.completion_tokens == len([ch for ch in chunks if ch.choices]) - 1
    assert usage.prompt_tokens_details.cached_tokens == (usage.prompt_tokens - 1) // B * B


def test_completions_plain_and_streaming(worker) -> None:
    c = client(worker.url)
    out = c.completions.create(model=MODEL, prompt="Tell me about caching prefixes", max_tokens=5)
    assert out.object == "text_completion"
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 5
    streamed = list(
        c.completions.create(model=MODEL, prompt="Tell me about caching prefixes", max_tokens=5, stream=True)
    )
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == out.choices[0].text
    ids = httpx.post(f"{worker.url}/tokenize", json={"prompt": "Tell me"}).json()["tokens"]
    by_ids = c.completions.create(model=MODEL, prompt=ids, max_tokens=3)
    assert by_ids.usage.prompt_tokens == len(ids)


def test_max_tokens_stop_and_ignore_eos(worker) -> None:
    msgs = [{"role": "user", "content": "Describe the weather"}]
    natural = chat(worker.url, msgs)
    text = natural["choices"][0]["message"]["content"]
    assert natural["choices"][0]["finish_reason"] == "stop"
    cut = chat(worker.url, msgs, max_tokens=2)
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 2
    word = text.split()[3]
    stopped = chat(worker.url, msgs, stop=[word])
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["stop_reason"] == word
    assert stopped["choices"][0]["message"]["content"] == text[: text.index(word)]
    long = chat(worker.url, msgs, max_tokens=200, ignore_eos=True)
    assert long["choices"][0]["finish_reason"] == "length"
    assert long["usage"]["completion_tokens"] == 200


def test_tokenize_detokenize_roundtrip(worker) -> None:
    r = httpx.post(f"{worker.url}/tokenize", json={"prompt": "Hello, multimodal world! 123"}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 8192
    back = httpx.post(f"{worker.url}/detokenize", json={"tokens": r["tokens"]}).json()
    assert back["prompt"] == "Hello, multimodal world! 123"
    chat_tok = httpx.post(
        f"{worker.url}/tokenize", json={"model": MODEL, "messages": image_message(data_url(png_bytes(GREEN)))}
    ).json()
    assert chat_tok["count"] > 256  # placeholders are expanded


def test_render_endpoints(worker) -> None:
    msgs = image_message(data_url(png_bytes(GREEN)), uuid="img-1")
    r = httpx.post(f"{worker.url}/v1/chat/completions/render", json={"model": MODEL, "messages": msgs}).json()
    assert r["features"]["mm_hashes"]["image"] == ["img-1"]
    ph = r["features"]["mm_placeholders"]["image"][0]
    assert ph["length"] == 256
    pad = r["token_ids"][ph["offset"]]
    assert r["token_ids"][ph["offset"] : ph["offset"] + ph["length"]] == [pad] * 256
    assert r["token_ids"][ph["offset"] - 1] != pad
    lst = httpx.post(f"{worker.url}/v1/completions/render", json={"model": MODEL, "prompt": "hi there"}).json()
    assert isinstance(lst, list) and lst[0]["features"] is None and lst[0]["token_ids"]


def test_reset_prefix_cache(worker) -> None:
    msgs = image_message(data_url(png_bytes(GREEN)))
    chat(worker.url, msgs)
    assert httpx.post(f"{worker.url}/reset_prefix_cache").json() == {"success": True}
    assert chat(worker.url, msgs)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_metrics_track_prefix_cache(worker) -> None:
    def scrape() -> dict[str, float]:
        out = {}
        for line in httpx.get(f"{worker.url}/metrics").text.splitlines():
            if line.startswith("vllm:") and "{" in line:
                name = line.split("{")[0]
                out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    msgs = image_message(data_url(png_bytes(GREEN)))
    first, second = chat(worker.url, msgs), chat(worker.url, msgs)
    m = scrape()
    assert m["vllm:prefix_cache_queries_total"] == first["usage"]["prompt_tokens"] * 2
    assert m["vllm:prefix_cache_hits_total"] == second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert m["vllm:request_success_total"] == 2
    assert m["vllm:generation_tokens_total"] == first["usage"]["completion_tokens"] * 2
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:prompt_tokens_total",
    ):
        assert name in m, name
    assert m["vllm:time_to_first_token_seconds_count"] == 2


def test_request_log_line(worker) -> None:
    r = httpx.post(
        f"{worker.url}/v1/chat/completions",
        headers={"X-Request-Id": "log-me-7"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert r.status_code == 200
    usage = r.json()["usage"]
    wait_until(lambda: "request_id=log-me-7" in worker.proc.log_path.read_text(), 5, what="request log line")
    line = next(ln for ln in worker.proc.log_path.read_text().splitlines() if "request_id=log-me-7" in ln)
    assert f"prompt_tokens={usage['prompt_tokens']}" in line
    assert "cached_tokens=0" in line and "latency_ms=" in line


# -- LoRA --------------------------------------------------------------------------------------------------------
def make_adapter(root: Path, name: str, rank: int = 8, base: str = MODEL) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(
        json.dumps({"r": rank, "base_model_name_or_path": base, "target_modules": ["q_proj", "v_proj"]})
    )
    return d


def test_lora_load_use_unload(sim_workers, tmp_path: Path) -> None:
    w = sim_workers(1, *FAST, "--enable-lora", "--max-lora-rank", "16")[0]
    path = make_adapter(tmp_path, "style-a")
    load = httpx.post(f"{w.url}/v1/load_lora_adapter", json={"lora_name": "style-a", "lora_path": str(path)})
    assert load.status_code == 200 and load.text == "Success: LoRA adapter 'style-a' added successfully."
    assert_error(
        httpx.post(f"{w.url}/v1/load_lora_adapter", json={"lora_name": "style-a", "lora_path": str(path)}),
        400,
        contains="already been loaded",
    )
    assert_error(
        httpx.post(
            f"{w.url}/v1/load_lora_adapter", json={"lora_name": "ghost", "lora_path": str(tmp_path / "missing")}
        ),
        404,
        contains="No adapter found",
    )
    big = make_adapter(tmp_path, "big", rank=64)
    assert_error(
        httpx.post(f"{w.url}/v1/load_lora_adapter", json={"lora_name": "big", "lora_path": str(big)}),
        400,
        contains="max_lora_rank",
    )

    cards = {c["id"]: c for c in httpx.get(f"{w.url}/v1/models").json()["data"]}
    assert cards["style-a"]["parent"] == MODEL and cards["style-a"]["root"] == str(path)
    assert cards[MODEL]["parent"] is None

    msgs = image_message(data_url(png_bytes(GREEN)))
    chat(w.url, msgs)  # warm the base model's cache
    r = httpx.post(f"{w.url}/v1/chat/completions", json={"model": "style-a", "messages": msgs}).json()
    assert r["model"] == "style-a"
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # the adapter is part of every block key
    # load_inplace replaces the weights under the same name; blocks are keyed by the name only
    # (_gen_lora_extra_hash_keys in vllm/v1/core/kv_cache_utils.py), so the old weights' blocks still hit.
    v2 = make_adapter(tmp_path, "style-a-v2")
    reload = httpx.post(
        f"{w.url}/v1/load_lora_adapter", json={"lora_name": "style-a", "lora_path": str(v2), "load_inplace": True}
    )
    assert reload.status_code == 200, reload.text
    stale = httpx.post(f"{w.url}/v1/chat/completions", json={"model": "style-a", "messages": msgs}).json()
    p = stale["usage"]["prompt_tokens"]
    assert stale["usage"]["prompt_tokens_details"]["cached_tokens"] == (p - 1) // 16 * 16
    assert httpx.post(f"{w.url}/v1/unload_lora_adapter", json={"lora_name": "style-a"}).status_code == 200
    assert_error(
        httpx.post(f"{w.url}/v1/unload_lora_adapter", json={"lora_name": "style-a"}), 404, contains="cannot be found"
    )
    assert_error(
        httpx.post(f"{w.url}/v1/chat/completions", json={"model": "style-a", "messages": msgs}),
        404,
        contains="does not exist",
    )


def test_lora_endpoints_absent_without_enable_lora(worker) -> None:
    r = httpx.post(f"{worker.url}/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/nope"})
    assert_error(r, 404)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_bad_input_gets_4xx_and_worker_keeps_serving(sim_workers, tmp_path: Path) -> None:
    w = sim_workers(
        1, *FAST[:2], "--max-model-len", "400", "--max-image-bytes", "200000", "--kv-cache-memory-bytes", "500000000"
    )[0]
    url = f"{w.url}/v1/chat/completions"
    assert_error(
        httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        contains="Invalid JSON",
    )
    assert_error(httpx.post(url, json=["a list"]), 400)
    bad_part = [{"role": "user", "content": [{"type": "image_file", "file": "x"}]}]
    err = assert_error(httpx.post(url, json={"model": MODEL, "messages": bad_part}), 400, contains="image_file")
    assert err["param"] == "messages[0].content[0].type"
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]
    assert_error(httpx.post(url, json={"model": MODEL, "messages": audio}), 400, contains="not supported")
    garbage = image_message("data:image/png;base64," + "aGVsbG8gd29ybGQ=")
    assert_error(httpx.post(url, json={"model": MODEL, "messages": garbage}), 400, contains="cannot identify")
    not_b64 = image_message("data:image/png;base64,@@@@")
    assert_error(httpx.post(url, json={"model": MODEL, "messages": not_b64}), 400, contains="base64")
    noise = noise_png(400, 400)  # incompressible: well over the 200 kB cap
    assert_error(
        httpx.post(url, json={"model": MODEL, "messages": image_message(data_url(noise))}),
        413,
        contains="larger than the limit",
    )
    remote = image_message("http://example.com/cat.png")
    assert_error(httpx.post(url, json={"model": MODEL, "messages": remote}), 400, contains="could not be fetched")
    too_long = [{"role": "user", "content": "word " * 600}]
    assert_error(
        httpx.post(url, json={"model": MODEL, "messages": too_long}),
        400,
        contains="maximum context length is 400 tokens",
    )
    assert_error(
        httpx.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}),
        400,
        contains="in the completion",
    )
    err = assert_error(
        httpx.post(url, json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
        404,
        contains="The model `no-such-model` does not exist.",
    )
    assert err["type"] == "NotFoundError" and err["param"] == "model"
    assert_error(
        httpx.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
        400,
        contains="max_tokens",
    )
    assert_error(httpx.post(f"{w.url}/detokenize", json={"tokens": [-5]}), 400)
    # Still serving, and still correct.
    assert httpx.get(f"{w.url}/health").status_code == 200
    ok = chat(w.url, image_message(data_url(png_bytes(GREEN, size=(64, 64)))))
    assert "green" in ok["choices"][0]["message"]["content"]
    assert w.proc.alive


# -- start-up, memory and faults ------------------------------------------------------------------------------
def test_health_503_until_startup_done_and_sim_gpu_memory(sim_workers, tmp_path: Path) -> None:
    gpu_dir = tmp_path / "simgpu"
    w = sim_workers(
        1,
        *FAST,
        "--startup-delay",
        "1.0",
        "--sim-gpu-index",
        "3",
        wait=False,
        env={"HARNESS_SIM_GPU_DIR": str(gpu_dir)},
    )[0]
    statuses: list[int] = []

    def health() -> bool:
        try:
            statuses.append(httpx.get(f"{w.url}/health", timeout=1).status_code)
        except httpx.HTTPError:
            return False
        return statuses[-1] == 200

    wait_until(health, 20, procs=[w.proc], what="health 200")
    assert 503 in statuses  # served "starting" before it was ready
    reg = SimGpuRegistry(gpu_dir)
    (entry,) = reg.processes(3)
    assert entry.pid == w.proc.pid and entry.label == w.name
    # Steady state = weights + 1 GB KV + runtime overhead; the profiling peak was higher than the weights.
    assert entry.used_bytes > 1_000_000_000 and entry.peak_bytes >= entry.used_bytes
    w.proc.signal_group(signal.SIGTERM)
    wait_until(lambda: not w.proc.alive, 10, what="worker exit")
    assert reg.processes(3) == []


def test_fail_startup_exits_nonzero(sim_workers) -> None:
    with pytest.raises(ProcessExitedError, match=r"exited with code 1"):
        sim_workers(1, *FAST, "--fail-startup")


def test_unknown_model_offline_exits_with_clear_error(sim_workers) -> None:
    with pytest.raises(ProcessExitedError, match="no image geometry") as info:
        sim_workers(1, *FAST, model="acme/mystery-model", env={"HF_HUB_OFFLINE": "1"})
    assert "--mm-family" in str(info.value)


def test_crash_after_n_requests(sim_workers) -> None:
    w = sim_workers(1, *FAST, "--crash-after", "2")[0]
    msgs = [{"role": "user", "content": "hi"}]
    chat(w.url, msgs)
    chat(w.url, msgs)
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{w.url}/v1/chat/completions", json={"model": MODEL, "messages": msgs}, timeout=10)
    wait_until(lambda: not w.proc.alive, 10, what="worker exit")
    assert w.proc.poll() == 70


def test_error_rate_fault(sim_workers) -> None:
    w = sim_workers(1, *FAST, "--error-rate", "1.0")[0]
    r = httpx.post(
        f"{w.url}/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    )
    assert_error(r, 500, contains="fault injection")
    assert httpx.get(f"{w.url}/health").status_code == 200


def test_kv_cache_too_small_for_max_model_len_fails_start(sim_workers) -> None:
    with pytest.raises(ProcessExitedError, match="max seq len"):
        sim_workers(1, "--kv-cache-memory-bytes", "20000000", "--max-model-len", "32768")


def test_geometry_from_local_model_dir(sim_workers, tmp_path: Path) -> None:
    model_dir = tmp_path / "my-vlm"
    model_dir.mkdir()
    (model_dir / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "Qwen2VLImageProcessor",
                "patch_size": 14,
                "merge_size": 2,
                "min_pixels": 3136,
                "max_pixels": 12845056,
            }
        )
    )
    w = sim_workers(1, *FAST, model=str(model_dir))[0]
    r = httpx.post(
        f"{w.url}/v1/chat/completions/render",
        json={"messages": image_message(data_url(png_bytes(GREEN, size=(1024, 768))))},
    ).json()
    assert r["features"]["mm_placeholders"]["image"][0]["length"] == 999  # REFERENCE.md: Qwen2.5-VL 1024x768
    assert os.path.basename(str(model_dir)) in w.proc.log_tail(50)


def test_prompt_tokens_details_only_with_the_flag(tmp_path: Path) -> None:
    """Like vLLM: without --enable-prompt-tokens-details the usage block has no cached_tokens (the gate then fails
    with a message naming the flag)."""
    from harness.sim.process import worker_env
    from harness.stack.ports import allocate_ports, release_ports
    from harness.stack.processes import spawn, wait_http_ready

    (port,) = allocate_ports(1)
    argv = [sys.executable, "-m", "harness.sim.worker", "--model", MODEL, "--port", str(port), *FAST]
    proc = spawn("bare", argv, tmp_path / "bare.log", env=worker_env())
    try:
        wait_http_ready(f"http://127.0.0.1:{port}/health", proc, 30)
        usage = chat(f"http://127.0.0.1:{port}", [{"role": "user", "content": "hi"}])["usage"]
        assert "prompt_tokens_details" not in usage and usage["prompt_tokens"] > 0
    finally:
        proc.terminate()
        release_ports([port])
