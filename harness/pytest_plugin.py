"""The harness's pytest plugin: profile cases as parameters, stacks as fixtures, verdicts into reports.

Options: ``--backend sim|vllm`` picks the profile cases; ``--max-vram-gib N`` deselects cases above the budget
and cases with no VRAM profile (unknown VRAM is unsafe); ``--harness-dry-run`` prints the plan and runs
nothing; ``--harness-report-dir DIR`` writes one JSON record per case (phase timings, check verdicts, requests)
there. CI markers (pre_merge, post_merge, nightly, ...) are registered so ``-m pre_merge`` selects.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.gate.image_server import ImageServer
from harness.gate.payloads import make_lora_adapter
from harness.gate.scenario import GateResult, run_gate
from harness.gpu.sampler import watch_case_vram
from harness.profiles import (
    BACKENDS,
    Case,
    default_launch_dir,
    default_profile_dir,
    load_profiles,
    vram_deselect_reason,
)
from harness.stack.launch import Stack, launched
from harness.stack.spec import DEFAULT_ADAPTER

MARKERS = {
    "pre_merge": "fast multimodal routing gates for every pull request",
    "post_merge": "the full matrix, after merge",
    "nightly": "long or large cases",
    "sim": "runs on the embedded simulated stack (no GPU)",
    "vllm": "runs real vLLM workers (needs GPUs)",
    "gpu_1": "needs one GPU",
    "gpu_2": "needs two GPUs",
    "gpu_4": "needs four GPUs",
    "routers": "third-party routers (vllm-router, sglang-router)",
}
CASE_KEY = pytest.StashKey[Case]()
RECORD_KEY = pytest.StashKey[dict[str, Any]]()
SIGTERM_KEY = pytest.StashKey[Any]()


def case_marks(case: Case) -> list[pytest.MarkDecorator]:
    """The case's marks in the documented order, then, for a control, a strict xfail."""
    marks = [getattr(pytest.mark, name) for name in case.mark_names]
    if case.is_control:
        # Only the gate's verdict (an assertion) rejects a control: a stack that never came up, or any other
        # error, must not pass for a rejection (pytest's xfail would otherwise swallow setup errors too).
        marks.append(
            pytest.mark.xfail(strict=True, raises=AssertionError, reason="degraded control: the gate must reject it")
        )
    return marks


def case_params(cases: Iterable[Case]) -> list[Any]:
    """``pytest.param`` objects, one per case, with ids and marks; duplicate ids are an error."""
    params, seen = [], set()
    for case in cases:
        if case.id in seen:
            raise ValueError(f"duplicate case id {case.id}")
        seen.add(case.id)
        params.append(pytest.param(case, id=case.id, marks=case_marks(case)))
    return params


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mmharness", "multimodal routing harness")
    group.addoption("--backend", choices=BACKENDS, default="sim", help="profile cases to run (default: sim)")
    group.addoption(
        "--max-vram-gib",
        type=float,
        default=None,
        help="deselect cases whose profiled VRAM exceeds this, and cases with no VRAM profile",
    )
    group.addoption("--harness-dry-run", action="store_true", help="print the plan, run nothing")
    group.addoption("--harness-profile-dir", type=Path, default=None, help="where profile files live")
    group.addoption("--harness-launch-dir", type=Path, default=None, help="where launch scripts live")
    group.addoption("--harness-report-dir", type=Path, default=None, help="write per-case JSON records here")


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    if config.getoption("--backend") == "sim":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the simulated stack never needs the hub
    # SIGTERM (a CI runner cancelling the job) would end pytest without any teardown, leaving every running
    # stack behind in its own session. Treat it like Ctrl-C, so fixtures and ``launched()`` tear stacks down.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        config.stash[SIGTERM_KEY] = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    if SIGTERM_KEY in config.stash and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, config.stash[SIGTERM_KEY])


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness_case" in metafunc.fixturenames:
        directory = metafunc.config.getoption("--harness-profile-dir") or default_profile_dir()
        try:
            cases = load_profiles(directory, backend=metafunc.config.getoption("--backend"))
            params = case_params(cases)
        except (ValueError, ImportError, SyntaxError, OSError) as exc:
            raise pytest.UsageError(f"harness profiles in {directory}: {exc}") from None
        metafunc.parametrize("harness_case", params)


def _case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("harness_case") if callspec else None


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    budget = config.getoption("--max-vram-gib")
    keep, drop = [], []
    for item in items:
        case = _case_of(item)
        reason = vram_deselect_reason(case, budget) if case else None
        if reason:
            drop.append(item)
            config.stash.setdefault(RECORD_KEY, {})[item.nodeid] = {"deselected": reason}
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if config.getoption("--harness-dry-run"):
        print_plan(config, items, drop)
        config.hook.pytest_deselected(items=list(items))
        items[:] = []


def print_plan(config: pytest.Config, items: list[pytest.Item], dropped: list[pytest.Item]) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    write = tr.write_line if tr else print
    write(f"harness plan: {len(items)} case(s) selected, {len(dropped)} deselected by VRAM budget")
    for item in items:
        case = _case_of(item)
        if case is None:
            continue
        t = case.effective
        write(
            f"  {case.id:48s} {t.backend:4s} workers={t.workers} router={t.router}:{t.policy or '-'} "
            f"vram={t.profiled_vram_gib} GiB expect={t.expect} marks={','.join(case.mark_names)}"
        )
    for item in dropped:
        case = _case_of(item)
        if case is not None:
            write(f"  - {vram_deselect_reason(case, config.getoption('--max-vram-gib'))}")


@pytest.fixture(scope="session")
def harness_image_server() -> Iterator[ImageServer]:
    with ImageServer() as server:
        yield server


@pytest.fixture(scope="session")
def harness_log_dir(request: pytest.FixtureRequest) -> Path:
    report_dir = request.config.getoption("--harness-report-dir")
    path = Path(report_dir) / "logs" if report_dir else Path(tempfile.mkdtemp(prefix="mmharness-logs-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def harness_stack(
    request: pytest.FixtureRequest, harness_case: Case, harness_log_dir: Path, tmp_path: Path
) -> Iterator[Stack]:
    extra_env: dict[str, str] = {}
    if harness_case.payload == "lora":
        adapters = Path(os.environ.get("HARNESS_LORA_DIR") or tmp_path / "adapters")
        if not os.environ.get("HARNESS_LORA_DIR"):
            make_lora_adapter(adapters, DEFAULT_ADAPTER, harness_case.model.model)
        extra_env["HARNESS_ADAPTER_DIR"] = str(adapters)
    launch_dir = request.config.getoption("--harness-launch-dir") or default_launch_dir()
    record = _record(request.node)
    record.update(
        case=harness_case.id,
        model=harness_case.model.model,
        topology=harness_case.topology.name,
        expect=harness_case.effective.expect,
        marks=harness_case.mark_names,
    )
    t0 = time.monotonic()
    t = harness_case.effective
    with (
        watch_case_vram(t.backend, t.profiled_vram_gib, record) as vram,  # sets record["vram"]: the measured peak
        launched(harness_case, harness_log_dir, extra_env=extra_env, launch_dir=launch_dir) as stack,
    ):
        if vram is not None:
            vram.attach(stack.proc.pid)  # the stack leads its own session: its workers are attributed to it
        record["phases"] = {"boot_total": round(time.monotonic() - t0, 3), **stack.phases}
        record["logs"] = str(harness_log_dir)
        yield stack
    record["phases"] = {**record["phases"], "teardown": round(stack.phases.get("teardown", 0.0), 3)}


@pytest.fixture
def harness_gate(request: pytest.FixtureRequest, harness_stack: Stack, harness_image_server: ImageServer) -> GateResult:
    t0 = time.monotonic()
    result = run_gate(harness_stack, harness_image_server)
    record = _record(request.node)
    record["phases"]["checks"] = round(time.monotonic() - t0, 3)
    record["gate"] = result.to_json()
    return result


def _record(item: pytest.Item) -> dict[str, Any]:
    return item.config.stash.setdefault(RECORD_KEY, {}).setdefault(item.nodeid, {})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if _case_of(item) is None:
        return
    record = _record(item)
    if report.when == "call" or (report.when == "setup" and report.failed):
        record["outcome"] = outcome_of(report)
        if report.failed and report.when == "setup":
            record["error"] = str(report.longrepr)[-4000:]
        record["duration_s"] = round(report.duration, 3)
    if report.when == "teardown":
        _write_record(item, record)


def outcome_of(report: pytest.TestReport) -> str:
    """passed / failed / xfailed (a control the gate rejected) / xpassed (a control that got through)."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and "XPASS(strict)" in str(report.longrepr):
        return "xpassed"
    return report.outcome


def _write_record(item: pytest.Item, record: dict[str, Any]) -> None:
    report_dir = item.config.getoption("--harness-report-dir")
    if not report_dir or "case" not in record:
        return
    cases = Path(report_dir) / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    (cases / f"{record['case']}.json").write_text(json.dumps(record, indent=2, default=str))
