"""Adapters through the proxy, against scripted fake workers: content-addressed served names, the model name
rewritten both ways, the adapter-404 retry decided on vLLM's structured error, loads and their timeout."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from harness.errors import ApiError
from harness.gate.payloads import make_lora_adapter
from harness.proxy.transport import FakeResponse, Timeout
from tests.helpers import MODEL
from tests.unit.proxy_fakes import (
    Fleet,
    RecordingSink,
    error_response,
    make_proxy,
    not_found_model,
    run,
    running,
    send,
)

MSGS = [{"role": "user", "content": "hello adapters"}]


@pytest.fixture
def adapters(tmp_path: Path) -> Path:
    for i, name in enumerate(("style-a", "style-b", "style-c")):
        make_lora_adapter(tmp_path, name, MODEL, seed=i)
    return tmp_path


def retries(proxy, reason: str) -> float:
    return proxy.metrics.registry.get_sample_value("harness_proxy_retries_total", {"reason": reason}) or 0.0


def test_workers_see_the_served_name_and_clients_their_own(adapters: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters)
        async with running(proxy):
            info = proxy.adapters.resolve("style-a")
            with caplog.at_level(logging.INFO, logger="harness.proxy"):
                reply = await send(proxy, {"model": "style-a", "messages": MSGS}, rid="a1")
            assert reply.status == 200 and orjson.loads(reply.body)["model"] == "style-a"
            assert fleet[0].loads == [{"lora_name": info.served_name, "lora_path": str(adapters / "style-a")}]
            assert fleet[0].generated[-1]["model"] == info.served_name
            cold = [r.getMessage() for r in caplog.records if "[LORA] cold load" in r.getMessage()]
            assert len(cold) == 1 and "adapter=style-a" in cold[0] and "request_id=a1" in cold[0]

            sink = await send(proxy, {"model": "style-a", "messages": MSGS, "stream": True})
            assert isinstance(sink, RecordingSink)
            models = {orjson.loads(e)["model"] for e in sink.events() if e != "[DONE]"}
            assert models == {"style-a"} and info.served_name not in sink.text
            assert len(fleet[0].loads) == 1  # loaded once

    run(main)


def test_stream_rename_survives_chunk_boundaries(adapters: Path) -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters)
        async with running(proxy):
            served = proxy.adapters.resolve("style-b").served_name
            event = b'data: {"model":"' + served.encode() + b'","choices":[]}\n\n'
            cut = event.index(b"@")  # split inside the name
            fleet[0].adapters[served] = "x"
            fleet[0].script.append(FakeResponse(200, chunks=[event[:cut], event[cut:] + event, b"data: [DONE]\n\n"]))
            sink = await send(proxy, {"model": "style-b", "messages": MSGS, "stream": True})
        assert sink.text.count('"model":"style-b"') == 2 and "@" not in sink.text

    run(main)


def test_replaced_adapter_gets_a_new_served_name(adapters: Path) -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters)
        async with running(proxy):
            await send(proxy, {"model": "style-a", "messages": MSGS})
            old = proxy.adapters.resolve("style-a").served_name
            key_old = await proxy.routing_key({"messages": MSGS}, True, proxy.adapters.resolve("style-a"))
            make_lora_adapter(adapters, "style-a", MODEL, seed=42)  # new weights, same name
            (adapters / "style-a" / "adapter_config.json").touch()
            new_info = proxy.adapters.resolve("style-a")
            assert new_info.served_name != old and new_info.served_name.startswith("style-a@")
            key_new = await proxy.routing_key({"messages": MSGS}, True, new_info)
            assert key_new.hashes[0] != key_old.hashes[0]  # no block of the old adapter can be hit
            reply = await send(proxy, {"model": "style-a", "messages": MSGS})
            assert reply.status == 200
            assert fleet[0].unloads == [old] and set(fleet[0].adapters) == {new_info.served_name}
            assert fleet[0].generated[-1]["model"] == new_info.served_name

    run(main)


def test_adapter_404_reregisters_once(adapters: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters)
        async with running(proxy):
            assert (await send(proxy, {"model": "style-a", "messages": MSGS})).status == 200
            fleet[0].adapters.clear()  # the worker restarted behind the proxy's back
            with caplog.at_level(logging.WARNING, logger="harness.proxy"):
                reply = await send(proxy, {"model": "style-a", "messages": MSGS}, rid="lost")
            assert reply.status == 200 and orjson.loads(reply.body)["model"] == "style-a"
            assert len(fleet[0].loads) == 2 and retries(proxy, "adapter_404") == 1
            assert any("re-registering" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)

            # A worker that keeps answering 404 gets one retry; then the client sees the 404.
            served = proxy.adapters.resolve("style-a").served_name
            fleet[0].script.extend([not_found_model(served), not_found_model(served)])
            again = await send(proxy, {"model": "style-a", "messages": MSGS})
            assert again.status == 404 and retries(proxy, "adapter_404") == 2
            assert orjson.loads(again.body)["error"]["type"] == "NotFoundError"

    run(main)


def test_other_404s_are_not_adapter_losses(adapters: Path) -> None:
    """Only vLLM's structured answer (404, NotFoundError, param model) means a lost adapter; a plain 404 (a
    route the worker lacks) or a 404 about something else passes through untouched."""

    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters)
        async with running(proxy):
            await send(proxy, {"model": "style-a", "messages": MSGS})
            fleet[0].script.extend(
                [
                    FakeResponse(404, b'{"detail": "Not Found"}'),  # FastAPI's unknown route
                    error_response(404, "The model `x` does not exist.", "NotFoundError", "lora_path"),
                ]
            )
            for _ in range(2):
                reply = await send(proxy, {"model": "style-a", "messages": MSGS})
                assert reply.status == 404
            assert len(fleet[0].loads) == 1 and retries(proxy, "adapter_404") == 0

    run(main)


def test_already_loaded_is_confirmed_by_the_model_list(adapters: Path) -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters)
        async with running(proxy):
            served = proxy.adapters.resolve("style-a").served_name
            fleet[0].adapters[served] = str(adapters / "style-a")  # loaded before this proxy started
            reply = await send(proxy, {"model": "style-a", "messages": MSGS})
            assert reply.status == 200 and len(fleet[0].loads) == 1
            assert proxy.workers[0].adapters == {"style-a": served}

            # A 400 for an adapter the worker does not list is a refusal, whatever its message says.
            fleet[0].load_script.append(
                error_response(400, "The lora adapter 'x' has already been loaded.", "InvalidUserInput")
            )
            with pytest.raises(ApiError) as err:
                await send(proxy, {"model": "style-b", "messages": MSGS})
            assert err.value.status == 502 and "refused to load adapter style-b@" in err.value.message
            assert "style-b" not in proxy.workers[0].adapters

    run(main)


def test_load_timeout_releases_the_lock_and_tries_elsewhere(adapters: Path) -> None:
    async def main() -> None:
        fleet = Fleet(2)
        fleet[0].load_script.append(Timeout("load took too long"))
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters, adapter_load_timeout_s=7.5)
        async with running(proxy):
            reply = await send(proxy, {"model": "style-a", "messages": MSGS})
            assert reply.status == 200 and reply.headers["X-Served-By"] == "fake-1"
            assert not proxy.workers[0].adapter_lock.locked()
            assert "style-a" not in proxy.workers[0].adapters
            loads = [r for r in proxy.transport.sent if r.path == "/v1/load_lora_adapter"]
            assert {r.timeout.total for r in loads} == {7.5}
            assert retries(proxy, "timeout") == 1

    run(main)


def test_full_worker_evicts_its_least_recently_used_adapter(adapters: Path) -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", adapter_dir=adapters, max_loras_per_worker=2)
        async with running(proxy):
            for name in ("style-a", "style-b", "style-a", "style-c"):
                assert (await send(proxy, {"model": name, "messages": MSGS})).status == 200
            served_b = proxy.adapters.resolve("style-b").served_name
            assert fleet[0].unloads == [served_b]
            assert list(proxy.workers[0].adapters) == ["style-a", "style-c"]

    run(main)
