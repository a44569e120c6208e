"""Forwarding and failover against scripted fake workers: which worker is tried next, what the client sees,
``max_attempts``, 5xx retries, mid-stream failures, and what the predicted index keeps."""

from __future__ import annotations

import logging

import orjson
import pytest

from harness.errors import ApiError
from harness.proxy.transport import ConnectError, FakeResponse, ReadError, ReadTimeout, Timeout
from harness.server.openai import SSE_DONE
from tests.helpers import data_url, image_message, png_bytes
from tests.unit.proxy_fakes import Fleet, RecordingSink, error_response, make_proxy, run, running, send
from tests.unit.test_proxy_routing import records

GREEN = (0, 200, 0)
BODY = {"messages": image_message(data_url(png_bytes(GREEN)))}


def boom(status: int = 500) -> FakeResponse:
    return error_response(status, "Simulated engine error.", "InternalServerError")


def retries(proxy, reason: str) -> float:
    return proxy.metrics.registry.get_sample_value("harness_proxy_retries_total", {"reason": reason}) or 0.0


async def primed(fleet: Fleet, **cfg):
    """A kv_mm proxy whose predicted indexes rank the fleet for BODY: worker 0 holds all of its blocks, worker 1
    the first two, the rest none, so the order of attempts is 0, 1, 2, ..."""
    proxy = make_proxy(fleet, "kv_mm", **cfg)
    key = await proxy.routing_key(BODY, True, None)
    proxy.workers[0].predicted.insert(key.hashes)
    proxy.workers[1].predicted.insert(key.hashes[:2])
    return proxy, key


def test_next_best_worker_takes_over_and_the_client_sees_its_answer(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet(3)
        fleet[0].script.append(boom(500))
        fleet[1].script.append(ConnectError("Connection refused"))
        proxy, key = await primed(fleet)
        async with running(proxy):
            with caplog.at_level(logging.INFO, logger="harness.proxy"):
                reply = await send(proxy, BODY, rid="f1")
        assert reply.status == 200 and reply.headers["X-Served-By"] == "fake-2"
        recs = records(caplog, "f1")
        assert [r.worker for r in recs] == ["fake-0", "fake-1", "fake-2"]
        assert [r.overlap_blocks for r in recs] == [len(key.hashes), 2, 0]
        assert retries(proxy, "worker_error") == 1 and retries(proxy, "connect") == 1
        # The 500 is charged to worker 0 without taking it out; the refused connection takes worker 1 out at once.
        assert proxy.workers[0].health.request_failures == 1 and proxy.workers[0].healthy
        assert not proxy.workers[1].healthy and proxy.workers[1].health.state == "out"
        # Only the worker that answered is predicted to hold the blocks now.
        assert proxy.workers[2].overlap(key.hashes) == len(key.hashes)
        assert all(w.predicted.pending == 0 for w in proxy.workers)

    run(main)


def test_max_attempts_bounds_the_tries_and_names_the_last_worker() -> None:
    async def main() -> None:
        fleet = Fleet(3)
        fleet[0].script.append(boom(503))
        fleet[1].script.append(boom(500))
        proxy, _ = await primed(fleet, max_attempts=2)
        async with running(proxy):
            with pytest.raises(ApiError) as err:
                await send(proxy, BODY)
        assert err.value.status == 502 and err.value.err_type == "BadGatewayError"
        message = err.value.message
        assert "fake-1" in message and "HTTP 500" in message and "gave up after 2 attempts" in message
        assert "127.0.0.1" not in message and "http://" not in message  # the worker by name, never its URL
        assert fleet[2].generated == []  # never tried

    run(main)


def test_exhausted_pool_returns_the_last_failure_not_503() -> None:
    async def main() -> None:
        fleet = Fleet(1)
        fleet[0].script.append(boom(500))
        proxy = make_proxy(fleet, "round_robin")
        async with running(proxy):
            with pytest.raises(ApiError) as err:
                await send(proxy, BODY)
        assert err.value.status == 502 and "fake-0 returned HTTP 500: Simulated engine error." in err.value.message

    run(main)


def test_client_errors_pass_through_and_are_not_predicted() -> None:
    async def main() -> None:
        fleet = Fleet(2)
        over = error_response(400, "This model's maximum context length is 8192 tokens.", "BadRequestError")
        fleet[0].script.append(over)
        proxy, key = await primed(fleet)
        proxy.workers[0].predicted.clear()
        proxy.workers[1].predicted.clear()
        async with running(proxy):
            reply = await send(proxy, BODY)
            assert reply.status == 400 and orjson.loads(reply.body)["error"]["type"] == "BadRequestError"
            assert len(fleet[0].generated) == 1 and fleet[1].generated == []  # a 4xx is not retried
            assert len(proxy.workers[0].predicted) == 0 and proxy.workers[0].predicted.pending == 0
            assert proxy.workers[0].health.request_failures == 0  # the worker did its job
            ok = await send(proxy, BODY)
            assert ok.status == 200
            served = int(ok.headers["X-Served-By"][-1])
            assert proxy.workers[served].overlap(key.hashes) == len(key.hashes)

    run(main)


def test_not_implemented_is_not_retried_nor_charged() -> None:
    async def main() -> None:
        fleet = Fleet(2)
        fleet[0].script.append(error_response(501, "beam search is not supported", "NotImplementedError"))
        proxy, _ = await primed(fleet)
        async with running(proxy):
            reply = await send(proxy, BODY)
        assert reply.status == 502 and "HTTP 501" in orjson.loads(reply.body)["error"]["message"]
        assert fleet[1].generated == [] and proxy.workers[0].health.request_failures == 0

    run(main)


def test_timeouts_are_504_and_not_retried() -> None:
    async def main() -> None:
        fleet = Fleet(2)
        fleet[0].script.extend([ReadTimeout("quiet"), Timeout("late")])
        proxy, _ = await primed(fleet)
        async with running(proxy):
            for expected in ("stopped answering", "did not answer within"):
                with pytest.raises(ApiError) as err:
                    await send(proxy, BODY)
                assert err.value.status == 504 and expected in err.value.message and "fake-0" in err.value.message
        assert fleet[1].generated == []
        assert proxy.workers[0].health.request_failures == 2

    run(main)


def test_read_error_before_the_first_byte_is_retried() -> None:
    async def main() -> None:
        fleet = Fleet(2)
        fleet[0].script.append(
            FakeResponse(200, chunks=[b'{"partial":', ReadError("Response payload is not completed")])
        )
        proxy, _ = await primed(fleet)
        async with running(proxy):
            reply = await send(proxy, BODY)
        assert reply.status == 200 and reply.headers["X-Served-By"] == "fake-1"

    run(main)


# -- streaming ---------------------------------------------------------------------------------------------------
def test_stream_relays_chunks_in_order() -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm")
        async with running(proxy):
            sink = await send(proxy, {**BODY, "stream": True})
        assert isinstance(sink, RecordingSink) and sink.status == 200 and sink.finished
        assert sink.events()[-1] == "[DONE]" and "green" in sink.text
        assert sink.headers["X-Served-By"] == "fake-0" and sink.headers["X-Request-Id"]

    run(main)


def test_worker_dying_mid_stream_ends_it_with_an_in_band_error(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet(2)
        first = b'data: {"choices": [{"delta": {"content": "it"}}]}\n\n'
        fleet[0].script.append(FakeResponse(200, chunks=[first, ReadError("Server disconnected")]))
        proxy, _ = await primed(fleet)
        async with running(proxy):
            with caplog.at_level(logging.INFO, logger="harness.proxy"):
                sink = await send(proxy, {**BODY, "stream": True}, rid="s1")
        assert sink.chunks[0] == first
        error = orjson.loads(sink.events()[-1])["error"]
        assert error["code"] == 502 and "fake-0 failed mid-stream" in error["message"]
        assert "127.0.0.1" not in error["message"]
        assert SSE_DONE not in sink.chunks and sink.finished
        assert [r.worker for r in records(caplog, "s1")] == ["fake-0"]  # bytes reached the client: no retry
        assert fleet[1].generated == [] and not proxy.workers[0].healthy

    run(main)


def test_stream_refused_before_the_first_byte_is_retried() -> None:
    async def main() -> None:
        fleet = Fleet(2)
        fleet[0].script.append(boom(500))
        proxy, _ = await primed(fleet)
        async with running(proxy):
            sink = await send(proxy, {**BODY, "stream": True})
        assert isinstance(sink, RecordingSink) and sink.headers["X-Served-By"] == "fake-1"
        assert sink.events()[-1] == "[DONE]"

    run(main)


def test_client_leaving_mid_stream_does_not_blame_the_worker() -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm")
        async with running(proxy):
            sink = await send(proxy, {**BODY, "stream": True}, sink=RecordingSink(leave_after=1))
            assert len(sink.chunks) == 1 and not sink.finished
            assert proxy.workers[0].healthy and proxy.workers[0].health.request_failures == 0
            assert proxy.workers[0].running == 0 and proxy.workers[0].active_prefill_tokens == 0

    run(main)
