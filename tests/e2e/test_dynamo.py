"""NVIDIA Dynamo 1.6.1 (frontend KV router + two mockers, CPU, loopback), booted by ``launch/dynamo.sh`` from the
built-in profiles, in both KV-event modes.

The first test pins what the harness reads from Dynamo against Dynamo itself: its ``[ROUTING]`` records parse,
carry the client's ``X-Request-Id``, and name the worker ``nvext.worker_id`` names and a mocker's ``/metrics``
labels; the overlap numbers are the verdict's evidence (README "Verdicts for NVIDIA Dynamo"). The second runs the
gate on the same profile case and expects what the profile declares: a rejection on a routing check.

Dynamo runs from ``.venv-dynamo`` (``make dynamo``; ``make test`` builds it first) or ``HARNESS_DYNAMO_PYTHON``.
Without it these tests FAIL, quoting pip's error when the install failed: CI must run them. Set
``HARNESS_SKIP_DYNAMO=1`` to skip them on a machine that cannot install Dynamo.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.contract import RoutingRecord, parse_mm_startup, records_for
from harness.gate.image_server import ImageServer
from harness.gate.payloads import data_url, solid_png
from harness.gate.scenario import run_gate
from harness.profiles import default_profile_dir, find_case, load_profiles
from harness.stack.launch import Stack, launched

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODES = ("kv_events", "kv_approx")
QUESTION = "What colour is this image? Answer in one word."


@pytest.fixture(scope="module")
def dynamo_python() -> str:
    if os.environ.get("HARNESS_DYNAMO_PYTHON"):
        return os.environ["HARNESS_DYNAMO_PYTHON"]
    venv = ROOT / ".venv-dynamo"
    if (venv / ".installed-1.6.1").is_file():
        return str(venv / "bin" / "python")
    if os.environ.get("HARNESS_SKIP_DYNAMO") == "1":
        pytest.skip("HARNESS_SKIP_DYNAMO=1: the Dynamo gate is not run on this machine")
    log = ROOT / ".venv-dynamo.install.log"
    if log.is_file():
        lines = log.read_text(errors="replace").splitlines()
        pytest.fail(
            "Dynamo 1.6.1 could not be installed (`make dynamo`), so the Dynamo gate did not run. pip said:\n"
            + "\n".join(lines[-25:]),
            pytrace=False,
        )
    pytest.fail(
        "no Dynamo environment: run `make dynamo` (`make test` does) or set HARNESS_DYNAMO_PYTHON; "
        "HARNESS_SKIP_DYNAMO=1 skips these tests",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def dynamo_case(mode: str) -> Any:
    return find_case(load_profiles(default_profile_dir(), backend="sim"), f"mm_dynamo_{mode}_qwen3-vl-2b")


def send(client: httpx.Client, stack: Stack, tag: str, url: str) -> tuple[str, dict[str, Any]]:
    rid = f"{tag}-{uuid.uuid4().hex[:8]}"
    body = {
        "model": stack.spec.model,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                  {"type": "text", "text": QUESTION}]}],
        "nvext": {"extra_fields": ["worker_id"]},
    }
    r = client.post(f"{stack.url}/v1/chat/completions", json=body, headers={"X-Request-Id": rid})
    assert r.status_code == 200, r.text
    return rid, r.json()


def record(stack: Stack, rid: str) -> RoutingRecord:
    assert stack.router_log is not None
    (rec,) = records_for(stack.router_log.read_text(errors="replace"), rid)
    return rec


def mocker_ids(client: httpx.Client, stack: Stack) -> set[int]:
    """The instance ids of the stack's mockers, from the ``worker_id`` label (hex) of their own /metrics."""
    ids = set()
    for url in stack.worker_urls:
        text = client.get(f"{url}/metrics", timeout=10).text
        labels = {line.split('worker_id="')[1].split('"')[0] for line in text.splitlines() if 'worker_id="' in line}
        assert len(labels) == 1, labels
        ids.add(int(labels.pop(), 16))
    return ids


@pytest.mark.parametrize("mode", MODES)
def test_dynamo_records_attribution_and_overlap(
    mode: str, dynamo_python: str, images: ImageServer, tmp_path: Path
) -> None:
    case = dynamo_case(mode)
    green, red = solid_png("green"), solid_png("red")
    green_url = images.add(f"dyn-{mode}-green.png", green)
    red_url = images.add(f"dyn-{mode}-red.png", red)
    env = {"HARNESS_DYNAMO_PYTHON": dynamo_python}
    with launched(case, tmp_path / "logs", extra_env=env) as stack, httpx.Client(timeout=60) as client:
        first, body = send(client, stack, "first", green_url)
        repeat, _ = send(client, stack, "repeat", green_url)
        transport, _ = send(client, stack, "transport", data_url(green))
        negative, _ = send(client, stack, "negative", red_url)
        workers = mocker_ids(client, stack)
        recs = {rid: record(stack, rid) for rid in (first, repeat, transport, negative)}
        startup = parse_mm_startup(stack.router_log.read_text(errors="replace")) if stack.router_log else None

    # Attribution: nvext names the worker the record names, and it is one of this stack's two mockers.
    decode_worker = body["nvext"]["worker_id"]["decode_worker_id"]
    assert recs[first].worker == f"worker_{decode_worker}"
    assert len(workers) == 2 and {int(r.worker.removeprefix("worker_")) for r in recs.values()} <= workers
    assert startup is not None  # "MM-aware KV routing enabled model=<model dir> model_dir=..."
    # The image enters the routing key: the router counts the image's placeholder tokens (21 blocks of 16),
    # while the mocker's own prompt (usage.prompt_tokens) holds one placeholder per image.
    assert recs[first].total_blocks > body["usage"]["prompt_tokens"] // stack.spec.block_size
    assert {r.total_blocks for r in recs.values()} == {recs[first].total_blocks}
    n = recs[first].total_blocks
    assert recs[first].overlap_blocks == 0
    assert recs[negative].overlap_blocks == 0  # a different image: nothing claimed
    assert recs[transport].overlap_blocks == 0  # the same bytes by base64: Dynamo hashes the URL's string
    if mode == "kv_approx":  # the router predicts from its own decisions: the repeat is N/N where the first went
        assert recs[repeat].overlap_blocks == n
        assert recs[repeat].worker == recs[first].worker
    else:  # with the mockers' KV events, the router's image-aware hashes never match: 0/N even for the repeat
        assert recs[repeat].overlap_blocks == 0


REPEAT_CLAIMS = "router claims the repeat's blocks on the first's worker"
TRANSPORT_CLAIMS = "router claims the same image sent by the other transport"
BURST_CLAIMS = "router claims the concurrent repeats' blocks on the first's worker"
SPARES = "router does not claim the new image's blocks"
REF_COVERS = "router keys the whole prompt as the reference expands it"
#: The routing checks that reject each mode, on the router's own records (deterministic: KV events never match,
#: and a URL's string is hashed in both modes), and those each mode passes.
REJECTED_BY = {
    "kv_events": {REPEAT_CLAIMS, TRANSPORT_CLAIMS, BURST_CLAIMS},
    "kv_approx": {TRANSPORT_CLAIMS},
}
PASSES = {"kv_events": {SPARES}, "kv_approx": {SPARES, REPEAT_CLAIMS, BURST_CLAIMS}}


@pytest.mark.parametrize("mode", MODES)
def test_gate_rejects_dynamo_on_routing(mode: str, dynamo_python: str, images: ImageServer, tmp_path: Path) -> None:
    """The profile declares both modes controls; the gate must reject each on the routing checks that say why
    (README "NVIDIA Dynamo"), with every required check judged (no evidence failure) and no health failure."""
    case = dynamo_case(mode)
    assert case.is_control
    caps = case.effective.router_capabilities
    assert (caps.records, caps.attribution, caps.engine_sees_images) == ("dynamo", ("nvext",), False)
    assert not caps.engine_text and not caps.workers_serve_openai and not caps.worker_metrics
    with launched(case, tmp_path / "logs", extra_env={"HARNESS_DYNAMO_PYTHON": dynamo_python}) as stack:
        result = run_gate(stack, images)
    report = result.report()
    with pytest.raises(AssertionError):
        result.assert_verdict(control=True)  # GateBroken (health, or no routing failure) would propagate
    by_name = {c.name: c for c in result.checks}
    failed = {c.name for c in result.failures}
    assert REJECTED_BY[mode] <= failed, report
    assert all(by_name[name].passed is True for name in PASSES[mode]), report
    assert not result.failed_kinds() & {"health", "evidence", "config"}, report
    # The reference expansion agrees with every record but those of image parts carrying a ``uuid``, which
    # Dynamo 1.6.1 leaves out of its key (one placeholder token: total_blocks 3 where the reference has 19).
    cover = by_name[REF_COVERS]
    assert cover.passed is False, report
    assert {bad.split(":")[0].strip() for bad in cover.actual.split(";")} <= {"uuid", "uuid-same", "uuid-other"}
    # What the mocker cannot judge is n/a with its reason, never a failure.
    blind = {n["name"]: n["reason"] for n in result.not_applicable}
    for name in ("router keys the whole prompt as the workers expand it", "different image: no cached image blocks"):
        assert "the engine ignores image content" in blind[name], report
