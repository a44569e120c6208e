"""The gate in both directions, on real stacks booted by the real launch scripts: the working policy passes
every check, and each degraded control fails at least one *behavioural* check (not only the start-up line)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from harness.contract import ENV_MEDIA_HOSTS
from harness.gate.image_server import ImageServer
from harness.gate.scenario import GateResult, run_gate
from harness.profiles import default_profile_dir, find_case, load_profiles
from harness.stack.launch import launched

pytestmark = pytest.mark.e2e
STARTUP = "MM-aware routing start-up line"


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


def gate(
    case_id: str, tmp_path: Path, images: ImageServer, extra_env: dict[str, str] | None = None, worker_args: str = ""
) -> GateResult:
    case = find_case(load_profiles(default_profile_dir(), backend="sim"), case_id)
    if worker_args:
        case = replace(case, extra_script_args=(worker_args,))
    env = {ENV_MEDIA_HOSTS: images.host_port, **(extra_env or {})}
    with launched(case, tmp_path / "logs", extra_env=env) as stack:
        return run_gate(stack, images)


def failed(result: GateResult) -> set[str]:
    return {c.name for c in result.failures}


def test_kv_mm_passes_every_check(tmp_path: Path, images: ImageServer) -> None:
    result = gate("mm_agg_router_qwen3-vl-2b", tmp_path, images)
    assert result.passed, result.report()
    names = {c.name for c in result.checks if c.passed}
    assert {
        "repeat hits the image blocks",
        "repeat co-locates",
        "different image: no cached image blocks",
        "router does not claim the new image's blocks",
        STARTUP,
    } <= names
    assert result.hit_rate is not None and result.hit_rate > 0.2


def test_kv_text_control_fails_for_what_a_text_only_key_does(tmp_path: Path, images: ImageServer) -> None:
    """kv_text keys the placeholder run without the image: it claims a different image's blocks as overlap and
    piles new images behind the same text onto one worker (not, as before, a one-block key split by load)."""
    result = gate("mm_agg_router_kv_text_qwen3-vl-2b", tmp_path, images)
    assert not result.passed
    assert {
        "router does not claim the new image's blocks",
        "router's claimed overlap does not exceed the worker's cache",
        "different images spread under load",
    } <= failed(result)
    assert "router keys the whole prompt as the workers expand it" not in failed(result)  # placeholders are kept


# Injected only into the stack's processes (sitecustomize on their PYTHONPATH): the gate's oracle is untouched.
PLUS_16 = (
    "import harness.mm.image_tokens as t\n"
    "_real = t.qwen_vl_tokens\n"
    "t.qwen_vl_tokens = lambda *a, **kw: _real(*a, **kw) + 16\n"
)


def test_sixteen_more_qwen_image_tokens_in_the_stack_turn_pre_merge_red(tmp_path: Path, images: ImageServer) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PLUS_16)
    result = gate("mm_agg_router_qwen3-vl-2b", tmp_path, images, extra_env={"PYTHONPATH": str(site)})
    assert not result.passed
    assert {
        "stack's image-token count (probe) matches the reference",
        "stack's render endpoint matches the reference",
    } <= failed(result)


def test_a_cache_without_the_last_token_rule_turns_pre_merge_red(tmp_path: Path, images: ImageServer) -> None:
    result = gate("mm_agg_router_qwen3-vl-2b", tmp_path, images, worker_args="--degrade no_last_token_rule")
    assert "repeat hits the image blocks" in failed(result)


def test_round_robin_control_fails_on_colocation(tmp_path: Path, images: ImageServer) -> None:
    result = gate("mm_agg_router_round_robin_qwen3-vl-2b", tmp_path, images)
    assert not result.passed
    assert {"repeat hits the image blocks", "repeat co-locates"} <= failed(result)


@pytest.mark.routers
@pytest.mark.parametrize(
    ("case_id", "module"),
    [
        ("mm_vllm_router_cache_aware_qwen3-vl-2b", "vllm_router"),
        ("mm_sglang_router_cache_aware_qwen3-vl-2b", "sglang_router"),
    ],
)
def test_third_party_routers_fail_on_routing_behaviour(
    case_id: str, module: str, tmp_path: Path, images: ImageServer
) -> None:
    """Both cache_aware routers serve multimodal traffic, but neither keeps images apart: each fails a routing
    check (the verdict is behavioural: they keep no routing records for the gate to read)."""
    pytest.importorskip(module)
    result = gate(case_id, tmp_path, images)
    assert "health" not in result.failed_kinds(), result.report()
    assert "routing" in result.failed_kinds(), result.report()


def test_harness_run_pre_merge_writes_a_green_report(tmp_path: Path) -> None:
    """`harness run -m pre_merge` end to end: gates pass, controls are rejected, the report says so."""
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "-m", "pre_merge", "--reports-dir", str(tmp_path), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = (tmp_path / "latest").resolve()
    assert (run_dir / "junit.xml").is_file()
    summary = (run_dir / "summary.md").read_text()
    assert summary.startswith("# mmharness sim gates: PASS")
    run = json.loads((run_dir / "run.json").read_text())
    totals = run["totals"]
    assert totals["green"] and totals["controls_through"] == 0 and totals["controls_rejected"] >= 2
    records = {r["case"]: r for r in run["cases"]}
    assert records["mm_agg_router_kv_text_qwen3-vl-2b"]["outcome"] == "xfailed"
    assert records["mm_agg_router_qwen3-vl-2b"]["outcome"] == "passed"
    assert {"launch_workers", "wait_workers", "router", "checks", "teardown"} <= set(
        records["mm_agg_router_qwen3-vl-2b"]["phases"]
    )
    assert (run_dir / "logs" / "mm_agg_router_qwen3-vl-2b.router.log").is_file()


def test_harness_run_fails_when_a_control_gets_through(tmp_path: Path) -> None:
    """A control that passes means the gate lost its teeth: the run must fail and the report must say so."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "broken.py").write_text(
        "from harness.profiles import Case, ModelProfile, Topology\n"
        "M = ModelProfile('Qwen/Qwen3-VL-2B-Instruct', 'qwen3-vl-2b', family='qwen3_vl')\n"
        "T = Topology('agg_router_mislabelled', 'agg_router.sh', marks=('pre_merge',), workers=2, router='proxy',\n"
        "             policy='kv_mm', requested_kv_cache_bytes=5 * 1024**3, profiled_vram_gib=16.0, expect='fail')\n"
        "CASES = [Case(M, T)]\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "run",
            "--reports-dir",
            str(tmp_path / "r"),
            "--harness-profile-dir",
            str(profiles),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    summary = (tmp_path / "r" / "latest" / "summary.md").read_text()
    assert "GOT THROUGH" in summary and summary.startswith("# mmharness sim gates: FAIL")
