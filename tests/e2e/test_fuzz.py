"""The bounded bad-input campaign: a seeded mix of broken JSON, corrupt images, refused URLs, bad encodings,
malformed HTTP, hostile paths and oversized bodies against a simulated worker and the proxy in front of it.

Every answer must be a non-5xx, every error an OpenAI-style JSON body, every answer within 2 s, and both servers
must still serve afterwards. ``benchmarks/fuzz_campaign.py`` runs the long version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.contract import parse_routing_records
from harness.server.fuzz import FuzzTargets, Report, cases, fuzz_stack, run_campaign, still_serving

pytestmark = pytest.mark.e2e

SEED = 20261202
PER_TARGET = 1000
MAX_SECONDS = 2.0


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTargets]:
    with fuzz_stack(tmp_path_factory.mktemp("fuzz")) as t:
        yield t


def campaign(port: int, t: FuzzTargets, seed: int) -> Report:
    return asyncio.run(run_campaign("127.0.0.1", port, list(cases(seed, PER_TARGET, t.ctx)), max_seconds=MAX_SECONDS))


@pytest.mark.parametrize("target", ["worker", "proxy"])
def test_bad_input_never_breaks_a_server(targets: FuzzTargets, target: str) -> None:
    port = targets.worker_port if target == "worker" else targets.proxy_port
    report = campaign(port, targets, SEED if target == "worker" else SEED + 1)
    assert sum(report.tried.values()) == PER_TARGET
    assert report.total_failed == 0, report.table(target)
    assert report.statuses[400] > PER_TARGET // 3  # the campaign reaches the validators, not just the router
    assert asyncio.run(still_serving("127.0.0.1", port)) is None


def test_no_forged_record_reached_a_log(targets: FuzzTargets) -> None:
    """The campaign sends paths and request ids that spell routing records; only real ones may be parsed."""
    asyncio.run(still_serving("127.0.0.1", targets.proxy_port))  # at least one real routing decision
    for log in Path(targets.log_dir).glob("*.log"):
        text = log.read_text(errors="replace")
        records = parse_routing_records(text)
        assert all(r.request_id != "forged" and r.worker != "w9" for r in records), log
        assert "\n[ROUTING] request_id=forged" not in text
