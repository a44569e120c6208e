"""Worker health: a pattern of failed probes takes a worker down (and only then its state goes), repeated failed
requests open a breaker that a passing probe after the cool-down closes. Pure state machine, then the proxy."""

from __future__ import annotations

from harness.proxy.transport import Timeout
from harness.proxy.workers import Health, HealthPolicy
from tests.helpers import data_url, image_message, png_bytes
from tests.unit.proxy_fakes import Fleet, error_response, make_proxy, run, running, send

POLICY = HealthPolicy(down_after=3, breaker_failures=3, breaker_cooldown_s=5.0)


def up() -> Health:
    h = Health(POLICY)
    assert h.probe(True, 0.0) == "up"
    return h


def test_one_missed_probe_changes_nothing_three_take_it_down() -> None:
    h = up()
    assert h.probe(False, 1.0) is None and h.in_rotation
    assert h.probe(True, 2.0) is None and h.probe_failures == 0  # a pattern means in a row
    assert [h.probe(False, t) for t in (3.0, 4.0, 5.0)] == [None, None, "down"]
    assert not h.in_rotation and h.state == "down"
    assert h.probe(False, 6.0) is None  # already down
    assert h.probe(True, 7.0) == "up" and h.in_rotation


def test_breaker_opens_on_repeated_failures_and_closes_after_cooldown() -> None:
    h = up()
    assert h.request_failed("worker_error", 1.0) is None
    h.request_ok()  # a success in between resets the count
    assert [h.request_failed("worker_error", t) for t in (2.0, 2.1, 2.2)] == [None, None, "opened"]
    assert h.state == "out" and not h.in_rotation and h.up
    assert h.probe(True, 6.0) is None and not h.in_rotation  # still cooling down
    assert h.probe(True, 7.3) == "reinstated" and h.in_rotation and h.request_failures == 0


def test_unreachable_opens_the_breaker_at_once() -> None:
    h = up()
    assert h.request_failed("unreachable", 1.0) == "opened" and h.state == "out"
    assert h.request_failed("unreachable", 1.1) is None  # already open


def test_proxy_keeps_index_and_adapters_through_a_missed_probe() -> None:
    async def main() -> None:
        fleet = Fleet(2)
        proxy = make_proxy(fleet, "kv_mm")
        async with running(proxy):
            body = {"messages": image_message(data_url(png_bytes((0, 200, 0))))}
            assert (await send(proxy, body)).status == 200
            w = next(w for w in proxy.workers if len(w.predicted))
            w.adapters["style-a"] = "style-a@0123456789ab"
            blocks = len(w.predicted)
            fleet[w.index].health_script.append(Timeout("slow /health"))  # one slow answer
            await proxy.check_health()
            assert w.healthy and len(w.predicted) == blocks and w.adapters
            await proxy.check_health()
            assert w.health.probe_failures == 0
            fleet[w.index].up = False  # now it is really gone
            for _ in range(2):
                await proxy.check_health()
            assert w.healthy and len(w.predicted) == blocks  # two misses: still a maybe
            await proxy.check_health()
            assert not w.healthy and len(w.predicted) == 0 and not w.adapters
            assert proxy.metrics.registry.get_sample_value("harness_proxy_worker_healthy", {"worker": w.name}) == 0

    run(main)


def test_erroring_worker_is_taken_out_and_comes_back_via_health_checks() -> None:
    async def main() -> None:
        fleet = Fleet(2)
        proxy = make_proxy(fleet, "round_robin", breaker_failures=2, breaker_cooldown_s=10.0)
        now = [100.0]
        proxy.clock = lambda: now[0]
        bad = proxy.workers[0]
        async with running(proxy):
            fleet[0].script.extend([error_response(500, "boom", "InternalServerError")] * 2)
            body = {"messages": [{"role": "user", "content": "hi"}]}
            statuses = [(await send(proxy, body)).status for _ in range(4)]
            assert statuses == [200] * 4  # each 500 was retried on the other worker
            assert bad.health.state == "out" and len(fleet[0].generated) == 2
            served = {(await send(proxy, body)).headers["X-Served-By"] for _ in range(3)}
            assert served == {"fake-1"}  # out of rotation
            await proxy.check_health()
            assert bad.health.state == "out"  # cool-down not over
            now[0] += 10.0
            await proxy.check_health()
            assert bad.healthy
            served = {(await send(proxy, body)).headers["X-Served-By"] for _ in range(2)}
            assert served == {"fake-0", "fake-1"}

    run(main)


def test_breaker_open_worker_is_a_last_resort() -> None:
    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "round_robin")
        async with running(proxy):
            proxy.workers[0].health.request_failed("unreachable", proxy.clock())
            assert not proxy.workers[0].healthy
            reply = await send(proxy, {"messages": [{"role": "user", "content": "hi"}]})
            assert reply.status == 200  # no worker in rotation, but one that passes health checks is used

    run(main)


def test_asset_sweep_loop_survives_a_failed_sweep(tmp_path) -> None:
    import asyncio

    from harness.mm.assets import SweepResult
    from harness.mm.options import MMOptions

    async def main() -> None:
        fleet = Fleet(1)
        proxy = make_proxy(fleet, "kv_mm", mm=MMOptions(asset_dir=tmp_path), asset_sweep_interval_s=0.0)
        assert proxy.assets is not None
        calls: list[int] = []

        def sweep(max_age_s: float) -> SweepResult:
            calls.append(1)
            if len(calls) == 1:
                raise FileNotFoundError("derived/x.facts.json vanished")
            return SweepResult(removed=0, kept=0, sources=0)

        proxy.assets.sweep = sweep  # type: ignore[method-assign]
        async with running(proxy):
            async with asyncio.timeout(10):
                while len(calls) < 3:
                    await asyncio.sleep(0.01)
            assert all(not t.done() for t in proxy._tasks)

    run(main)


def test_sweep_skips_an_artifact_unlinked_under_it(tmp_path, monkeypatch) -> None:
    import os
    from pathlib import Path

    from harness.mm.assets import AssetStore

    store = AssetStore(tmp_path).ensure()
    store.derived.mkdir(parents=True, exist_ok=True)
    for name in ("old.facts.json", "gone.facts.json"):
        (store.derived / name).write_text("{}")
        os.utime(store.derived / name, (1, 1))
    real_stat = Path.stat
    seen: list[Path] = []

    def racing_stat(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.name == "gone.facts.json":
            seen.append(self)
            if len(seen) == 2:  # is_file() passed; another process's sweep unlinks it before the age check
                os.unlink(self)
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", racing_stat)
    result = store.sweep(60.0)
    assert len(seen) >= 2 and result.removed == 1 and not (store.derived / "old.facts.json").exists()
