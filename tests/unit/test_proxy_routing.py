"""The proxy's routing key and its decision records, against scripted fake workers (no processes, no sockets)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from harness.contract import RoutingRecord, parse_routing_records
from harness.mm.hashing import BlockKeyContext, block_hashes
from harness.proxy.transport import FakeResponse, TransportRequest
from tests.helpers import data_url, image_message, png_bytes
from tests.unit.proxy_fakes import Fleet, make_proxy, run, running, send

GREEN, RED = (0, 200, 0), (220, 0, 0)


def records(caplog: pytest.LogCaptureFixture, rid: str) -> list[RoutingRecord]:
    """The proxy's routing records of ``rid``, each parsed from one whole message the proxy logged."""
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "harness.proxy")
    return [r for r in parse_routing_records(text) if r.request_id == rid]


def body_with(colour: tuple[int, int, int], text: str = "What colour is this image?") -> dict:
    return {"messages": image_message(data_url(png_bytes(colour)), text)}


# -- the routing key -------------------------------------------------------------------------------------------
def test_kv_mm_key_carries_the_image() -> None:
    async def main() -> None:
        proxy = make_proxy(Fleet(2), "kv_mm")
        green = await proxy.routing_key(body_with(GREEN), True, None)
        again = await proxy.routing_key(body_with(GREEN), True, None)
        red = await proxy.routing_key(body_with(RED), True, None)
        text_only = await proxy.routing_key({"messages": [{"role": "user", "content": "hi"}]}, True, None)
        assert green == again
        assert green.prompt_tokens == red.prompt_tokens > text_only.prompt_tokens + 4  # image placeholders count
        assert green.hashes != red.hashes
        # Same text before the image: the blocks ahead of it agree, every block from the image on differs.
        shared = next(i for i, (a, b) in enumerate(zip(green.hashes, red.hashes, strict=True)) if a != b)
        assert all(a != b for a, b in zip(green.hashes[shared:], red.hashes[shared:], strict=True))
        assert len(green.hashes) == (green.prompt_tokens // proxy.cfg.block_size)

    run(main)


def test_kv_mm_key_locates_the_images_and_in_flight_work_prices_their_encoder() -> None:
    """The key names each image's placeholder run; a request in flight charges its worker the prompt plus the
    vision encoder of an image that worker had not seen (``policies.prefill_work``); kv_text's image-blind key
    names no image, so it prices images as text."""

    async def main() -> None:
        fleet = Fleet(1)
        gate = asyncio.Event()

        async def slow(req: TransportRequest) -> FakeResponse:
            await gate.wait()
            return fleet[0].answer({})

        fleet[0].script.append(slow)
        proxy = make_proxy(fleet, "kv_mm", image_weight=3.0)
        key = await proxy.routing_key(body_with(GREEN), True, None)
        ((offset, length),) = key.images
        assert length > 4 and 0 < offset < offset + length < key.prompt_tokens
        assert (await make_proxy(Fleet(1), "kv_text").routing_key(body_with(GREEN), True, None)).images == ()
        async with running(proxy):
            task = asyncio.create_task(send(proxy, body_with(GREEN), rid="w1"))
            while not fleet[0].generated:
                await asyncio.sleep(0)
            assert proxy.workers[0].active_prefill_tokens == key.prompt_tokens + 3 * length
            gate.set()
            await task
        assert proxy.workers[0].active_prefill_tokens == 0

    run(main)


def test_kv_text_key_is_blind_to_image_content() -> None:
    async def main() -> None:
        text = make_proxy(Fleet(2), "kv_text")
        mm = make_proxy(Fleet(2), "kv_mm")
        green = await text.routing_key(body_with(GREEN), True, None)
        red = await text.routing_key(body_with(RED), True, None)
        # The degradation kv_text exists to show: different images, identical keys...
        assert green == red
        # ...where kv_mm, on the same bodies, tells them apart.
        assert (await mm.routing_key(body_with(GREEN), True, None)) != (
            await mm.routing_key(body_with(RED), True, None)
        )
        other_text = await text.routing_key(body_with(GREEN, "Something else entirely?"), True, None)
        assert other_text != green  # the text still counts

    run(main)


def test_adapter_enters_the_key_under_its_served_name(tmp_path) -> None:
    from harness.gate.payloads import make_lora_adapter
    from tests.helpers import MODEL

    make_lora_adapter(tmp_path, "style-a", MODEL, seed=0)

    async def main() -> None:
        proxy = make_proxy(Fleet(1), "kv_mm", adapter_dir=tmp_path)
        async with running(proxy):
            info = proxy.adapters.resolve("style-a")
            assert info is not None and info.served_name == f"style-a@{info.digest[:12]}"
            body = {"messages": [{"role": "user", "content": "hello " * 40}]}
            base = await proxy.routing_key(body, True, None)
            with_adapter = await proxy.routing_key(body, True, info)
            assert base.prompt_tokens == with_adapter.prompt_tokens and base.hashes != with_adapter.hashes
            from harness.mm.request import render_request

            rendered = await render_request(body, chat=True, family=proxy.family, resolver=None, image_limit=4)
            expected = block_hashes(
                rendered.prompt.token_ids, proxy.cfg.block_size, [], BlockKeyContext(lora_name=info.served_name)
            )
            assert with_adapter.hashes == expected

    run(main)


def test_non_kv_policy_computes_no_key(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet(2)
        proxy = make_proxy(fleet, "round_robin")
        async with running(proxy):
            with caplog.at_level(logging.INFO, logger="harness.proxy"):
                await send(proxy, body_with(GREEN), rid="rr-1")
                await send(proxy, body_with(GREEN), rid="rr-2")
        assert [records(caplog, rid)[0].worker for rid in ("rr-1", "rr-2")] == ["fake-0", "fake-1"]
        assert records(caplog, "rr-1")[0].total_blocks == 0

    run(main)


# -- decisions: one record per attempt ------------------------------------------------------------------------
def test_one_record_per_request_and_repeats_colocate(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet(3)
        proxy = make_proxy(fleet, "kv_mm")
        async with running(proxy):
            with caplog.at_level(logging.INFO, logger="harness.proxy"):
                first = await send(proxy, body_with(GREEN), rid="g1")
                second = await send(proxy, body_with(GREEN), rid="g2")
                other = await send(proxy, body_with(RED), rid="r1")
            assert first.status == second.status == other.status == 200
            (r1,), (r2,), (r3,) = records(caplog, "g1"), records(caplog, "g2"), records(caplog, "r1")
            assert r1.overlap_blocks == 0 and r2.overlap_blocks == r2.total_blocks > 0
            assert r1.worker == r2.worker == first.headers["X-Served-By"] == second.headers["X-Served-By"]
            assert r3.overlap_blocks < r3.total_blocks and r3.worker != r1.worker  # least cached takes new content
            decisions = proxy.metrics.registry.get_sample_value(
                "harness_proxy_routing_decisions_total", {"worker": r1.worker, "policy": "kv_mm"}
            )
            assert decisions == 2

    run(main)


def test_failover_records_each_attempt_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        fleet = Fleet(2)
        fleet[0].script.append(FakeResponse(500, b'{"error": {"message": "boom", "type": "InternalServerError"}}'))
        proxy = make_proxy(fleet, "kv_mm")
        async with running(proxy):
            with caplog.at_level(logging.INFO, logger="harness.proxy"):
                reply = await send(proxy, body_with(GREEN), rid="f1")
        assert reply.status == 200 and reply.headers["X-Served-By"] == "fake-1"
        assert [r.worker for r in records(caplog, "f1")] == ["fake-0", "fake-1"]

    run(main)


def test_in_flight_blocks_attract_concurrent_repeats(caplog: pytest.LogCaptureFixture) -> None:
    """Blocks are reserved at decision time, so a burst of one prompt stays on one worker while the first
    request is still running, without waiting for its answer."""

    async def main() -> None:
        fleet = Fleet(2)
        gate = asyncio.Event()

        async def slow(req: TransportRequest) -> FakeResponse:
            await gate.wait()
            return fleet[0].answer({})

        fleet[0].script.append(slow)
        # Load weights off: the in-flight first request would otherwise price its own worker out of a tie.
        proxy = make_proxy(fleet, "kv_mm", running_weight=0.0, prefill_load_weight=0.0)
        async with running(proxy):
            with caplog.at_level(logging.INFO, logger="harness.proxy"):
                first = asyncio.create_task(send(proxy, body_with(GREEN), rid="b1"))
                while not fleet[0].generated:
                    await asyncio.sleep(0)
                assert proxy.workers[0].predicted.pending > 0 and len(proxy.workers[0].predicted) == 0
                second = await send(proxy, body_with(GREEN), rid="b2")
                gate.set()
                await first
        (rec,) = records(caplog, "b2")
        assert rec.worker == "fake-0" and rec.overlap_blocks == rec.total_blocks
        assert second.status == 200
        assert proxy.workers[0].predicted.pending == 0

    run(main)


def test_images_of_one_request_resolve_concurrently() -> None:
    async def main() -> None:
        proxy = make_proxy(Fleet(1), "kv_mm")
        assert proxy.images is not None
        real = proxy.images.resolve
        in_flight, peak = 0, 0
        both = asyncio.Event()

        async def resolve(part):  # type: ignore[no-untyped-def]
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight == 2:
                both.set()
            await asyncio.wait_for(both.wait(), 5)  # the first image waits until the second started
            in_flight -= 1
            return await real(part)

        proxy.images.resolve = resolve  # type: ignore[method-assign]
        two = [
            {"type": "image_url", "image_url": {"url": data_url(png_bytes(GREEN))}},
            {"type": "image_url", "image_url": {"url": data_url(png_bytes(RED))}},
            {"type": "text", "text": "compare"},
        ]
        key = await proxy.routing_key({"messages": [{"role": "user", "content": two}]}, True, None)
        assert peak == 2 and key.prompt_tokens > 0

    run(main)


def test_first_bad_image_in_prompt_order_is_reported() -> None:
    """Resolved concurrently, but reported like one after the other: the first failing part in prompt order,
    even when a later part failed sooner."""
    from harness.errors import ImageError

    async def main() -> None:
        proxy = make_proxy(Fleet(1), "kv_mm")
        assert proxy.images is not None

        async def resolve(part):  # type: ignore[no-untyped-def]
            if part.url.endswith("slow-bad"):
                await asyncio.sleep(0.05)
                raise ImageError("image 1 is bad")
            raise ImageError("image 2 is bad")

        proxy.images.resolve = resolve  # type: ignore[method-assign]
        parts = [{"type": "image_url", "image_url": {"url": u}} for u in ("http://x/slow-bad", "http://x/fast-bad")]
        with pytest.raises(ImageError, match="image 1 is bad"):
            await proxy.routing_key({"messages": [{"role": "user", "content": parts}]}, True, None)

    run(main)
