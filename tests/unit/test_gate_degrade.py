"""The test-only degradation switches the gate is proven against: parsing, and what each does to the key."""

from __future__ import annotations

import pytest

from harness.mm.hashing import BlockKeyContext, block_hashes
from harness.mm.prompt import MMItem
from harness.proxy import config as proxy_config
from harness.proxy import degrade as proxy_degrade
from harness.proxy.workers import WorkerState
from harness.server.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from harness.sim import config as sim_config
from harness.sim import degrade as sim_degrade
from tests.unit.proxy_fakes import Fleet, make_proxy

TOKENS = list(range(300, 364))  # 64 tokens: 4 blocks of 16
A, B = MMItem("A", 5, 20), MMItem("B", 30, 20)


def hashes(items: list[MMItem]) -> list[int]:
    return block_hashes(TOKENS, 16, items, BlockKeyContext())


def test_parse_modes() -> None:
    assert proxy_degrade.parse_modes(["text_key,url_hash", "no_lora"]) == {"text_key", "url_hash", "no_lora"}
    assert proxy_degrade.parse_modes(None) == frozenset()
    with pytest.raises(ValueError, match="unknown --degrade"):
        proxy_degrade.parse_modes("faster")
    assert sim_degrade.parse_modes("no_prefix_cache") == {"no_prefix_cache"}
    with pytest.raises(ValueError):
        sim_degrade.parse_modes("text_key")  # a router degradation is not an engine one


def test_flags_are_hidden_and_checked() -> None:
    base = ["--model", "m", "--workers", "http://127.0.0.1:1", "--port", "2"]
    assert proxy_config.parse_args(base).degrade == frozenset()
    assert proxy_config.parse_args([*base, "--degrade", "block_size"]).degrade == {"block_size"}
    with pytest.raises(SystemExit):
        proxy_config.parse_args([*base, "--degrade", "bogus"])
    assert "--degrade" not in proxy_config.build_parser().format_help()
    assert sim_config.parse_args(["--model", "m", "--port", "1", "--degrade", "size_only_hash"]).degrade == {
        "size_only_hash"
    }
    assert "--degrade" not in sim_config.build_parser().format_help()


def test_text_key_keeps_placeholders_but_not_images() -> None:
    other = [MMItem("C", 5, 20), MMItem("D", 30, 20)]
    assert hashes([A, B]) != hashes(other)  # a correct key tells the images apart
    modes = frozenset({"text_key"})
    assert hashes(proxy_degrade.degrade_items([A, B], modes)) == hashes(proxy_degrade.degrade_items(other, modes))
    assert [it.length for it in proxy_degrade.degrade_items([A, B], modes)] == [20, 20]  # runs kept


def test_first_image_only_and_no_offset() -> None:
    first_only = frozenset({"first_image_only"})
    changed_second = [A, MMItem("Z", 30, 20)]
    assert hashes(proxy_degrade.degrade_items([A, B], first_only)) == hashes(
        proxy_degrade.degrade_items(changed_second, first_only)
    )
    moved = proxy_degrade.degrade_items([A, B], frozenset({"no_offset"}))
    assert moved == [MMItem("A|B", 0, 1)]  # every image keyed on the first block


def _event_fed_worker(modes: frozenset[str]) -> WorkerState:
    fleet = Fleet(1)
    url = fleet[0].url
    proxy = make_proxy(fleet, kv_events={url: "tcp://127.0.0.1:1"}, degrade=modes)  # not started: no socket
    return proxy.workers[0]


def test_an_event_fed_worker_forgets_what_its_events_remove() -> None:
    """A healthy event-fed index: an eviction or a clear takes the blocks out of the events' mirror *and* out of
    the committed predictions, so nothing claims blocks the worker said are gone."""
    w = _event_fed_worker(frozenset())
    w.predicted.insert([1, 2, 3])
    w.apply_events([BlockStored((1, 2, 3), None, tuple(range(48)), 16)])
    assert w.overlap([1, 2, 3]) == 3
    w.apply_events([BlockRemoved((3,))])
    assert w.overlap([1, 2, 3]) == 2
    w.predicted.reserve([1, 2, 3])  # a request in flight keeps its reservation through a clear
    w.apply_events([AllBlocksCleared()])
    assert w.overlap([1, 2, 3]) == 3
    w.predicted.settle([1, 2, 3], commit=False)
    assert w.overlap([1, 2, 3]) == 0


def test_never_forgets_ignores_event_removals_and_clears() -> None:
    w = _event_fed_worker(frozenset({"never_forgets"}))
    w.predicted.insert([1, 2, 3])
    w.apply_events([BlockStored((1, 2, 3, 4), None, tuple(range(64)), 16)])
    w.apply_events([BlockRemoved((2,)), AllBlocksCleared()])
    assert w.overlap([1, 2, 3, 4]) == 4
    assert w.events is not None and w.events.match([1, 2, 3, 4]) == 4
