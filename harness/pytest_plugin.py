"""The harness's pytest plugin: profile cases as parameters, stacks as fixtures, verdicts into reports.

Options: ``--backend sim|vllm`` picks the profile cases; ``--max-vram-gib N`` deselects cases above the budget
and cases with no VRAM profile (unknown VRAM is unsafe); ``--harness-dry-run`` prints the plan and runs
nothing; ``--harness-report-dir DIR`` writes one JSON record per case (phase timings, check verdicts, requests)
there. CI markers (pre_merge, post_merge, nightly, ...) are registered so ``-m pre_merge`` selects.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from harness.contract import ENV_MEDIA_HOSTS
from harness.gate.image_server import ImageServer
from harness.gate.payloads import make_lora_adapter
from harness.gate.scenario import GateResult, run_gate
from harness.gpu.sampler import watch_case_vram
from harness.profiles import (
    BACKENDS,
    Case,
    default_launch_dir,
    default_profile_dir,
    find_case,
    load_profiles,
    vram_deselect_reason,
)
from harness.report.runinfo import SELECTION_FILE, explain_no_selection
from harness.stack.launch import LaunchError, Stack, launched
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
    "dynamo": "NVIDIA Dynamo stacks (its own environment: `make dynamo` or HARNESS_DYNAMO_PYTHON)",
}
CASE_KEY = pytest.StashKey[Case]()
RECORD_KEY = pytest.StashKey[dict[str, Any]]()
WRITTEN_KEY = pytest.StashKey[set[str]]()
SELECTION_KEY = pytest.StashKey[dict[str, Any]]()
PROFILE_ERROR_KEY = pytest.StashKey[str]()
SIGTERM_KEY = pytest.StashKey[Any]()
#: A case's pytest timeout is its boot deadline (``Topology.timeout_s``) plus these: the gate's requests (at least
#: CHECKS_BUDGET_S, or timeout_s when that is longer: a stack slow to boot is slow to serve) and teardown
#: (``stop_stack``: SIGTERM, 5 s grace, SIGKILL, 5 s more). pytest-timeout covers setup, call and teardown at once.
CHECKS_BUDGET_S = 180.0
TEARDOWN_BUDGET_S = 30.0


def case_timeout_s(case: Case) -> float:
    """The whole-case budget for pytest-timeout, from the case's own boot deadline: real-vLLM boots are
    profiled at 600-900 s, so one global timeout either kills them or lets a hung simulated case sit for 15 min."""
    boot = case.effective.timeout_s
    return boot + max(CHECKS_BUDGET_S, boot) + TEARDOWN_BUDGET_S


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
    # URL mode (``harness run --url``): gate one already-running stack instead of the profile cases.
    group.addoption("--harness-url", default=None, help="gate the stack already running at this URL")
    group.addoption("--harness-worker-url", action="append", default=[], help="a worker of that stack (repeat)")
    group.addoption("--harness-model", default=None, help="its model (default: the first of its /v1/models)")
    group.addoption(
        "--harness-attach",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="what it lets the gate observe: records=harness|dynamo|none, attribution=header[:NAME],nvext,metrics, "
        "startup_line=yes, engine_sees_images=no, engine_text=no, workers_serve_openai=no, worker_metrics=no, "
        "router_log=FILE, "
        "block_size, family, payload, expect, workers",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, doc in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    for name in profile_mark_names(config.getoption("--harness-profile-dir") or default_profile_dir()):
        if name not in MARKERS:  # a profile's own marks: no PytestUnknownMarkWarning, and --strict-markers works
            config.addinivalue_line("markers", f"{name}: declared by a harness profile")
    if config.getoption("--backend") == "sim":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the simulated stack never needs the hub
    # SIGTERM (a CI runner cancelling the job) would end pytest without any teardown, leaving every running
    # stack behind in its own session. Treat it like Ctrl-C, so fixtures and ``launched()`` tear stacks down.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        config.stash[SIGTERM_KEY] = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def profile_mark_names(directory: Path) -> list[str]:
    """Every mark a profile case carries (``gpu_N`` included), in order; none when the profiles do not load
    (``pytest_generate_tests`` reports that error where it belongs)."""
    try:
        cases = load_profiles(Path(directory)) if Path(directory).is_dir() else []
    except Exception:  # a broken profile file is reported once, at collection, not here
        return []
    names: dict[str, None] = {}
    for case in cases:
        names.update(dict.fromkeys(case.mark_names))
    return list(names)


def pytest_unconfigure(config: pytest.Config) -> None:
    if SIGTERM_KEY in config.stash and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, config.stash[SIGTERM_KEY])


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "harness_case" in metafunc.fixturenames and metafunc.config.getoption("--harness-url"):
        from harness.stack.attach import AttachError, spec_from_options, url_case

        opt = metafunc.config.getoption
        try:
            case = url_case(spec_from_options(opt("--harness-url"), opt("--harness-worker-url"),
                                              opt("--harness-model"), opt("--harness-attach")))
        except AttachError as exc:
            metafunc.config.stash[PROFILE_ERROR_KEY] = f"harness URL mode: {exc}"
            return
        metafunc.parametrize("harness_case", case_params([case]))
        return
    if "harness_case" in metafunc.fixturenames:
        directory = metafunc.config.getoption("--harness-profile-dir") or default_profile_dir()
        backend = metafunc.config.getoption("--backend")
        # A usage error raised here would be reported as a collection error with a traceback: it is raised from
        # pytest_collection_modifyitems instead, which pytest reports as one ``ERROR:`` line and exit status 4.
        if not Path(directory).is_dir():
            metafunc.config.stash[PROFILE_ERROR_KEY] = f"harness profile directory {directory} does not exist"
            return
        try:
            every = load_profiles(directory)
            cases = [c for c in every if c.effective.backend == backend]
            params = case_params(cases)
        except (ValueError, ImportError, SyntaxError, OSError) as exc:
            metafunc.config.stash[PROFILE_ERROR_KEY] = f"harness profiles in {directory}: {exc}"
            return
        if not cases:
            # An empty parameter set would be one skipped test: a green run that gated nothing.
            others = sorted({c.effective.backend for c in every})
            found = f"it has {', '.join(others)} cases only" if others else "it has no cases (CASES lists in *.py)"
            metafunc.config.stash[PROFILE_ERROR_KEY] = (
                f"harness profile directory {directory} has no --backend {backend} case: {found}"
            )
            return
        metafunc.config.stash[SELECTION_KEY] = {
            "profile_dir": str(directory),
            "backend": backend,
            "cases": len(cases),
            "marks": sorted({m for c in cases for m in c.mark_names}),
        }
        metafunc.parametrize("harness_case", params)


def _case_of(item: pytest.Item) -> Case | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("harness_case") if callspec else None


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if PROFILE_ERROR_KEY in config.stash:
        raise pytest.UsageError(config.stash[PROFILE_ERROR_KEY])
    budget = config.getoption("--max-vram-gib")
    keep, drop = [], []
    for item in items:
        case = _case_of(item)
        if case is not None:
            # pytest-timeout takes the closest timeout marker over the ini's: this one, unless the test function
            # carries its own (markers of the function come first).
            item.add_marker(pytest.mark.timeout(case_timeout_s(case)))
        reason = vram_deselect_reason(case, budget) if case else None
        if reason:
            drop.append(item)
            config.stash.setdefault(RECORD_KEY, {})[item.nodeid] = {"deselected": reason}
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    _note_selection(config, items)
    if config.getoption("--harness-dry-run"):
        print_plan(config, items, drop)
        config.hook.pytest_deselected(items=list(items))
        items[:] = []


def _note_selection(config: pytest.Config, items: list[pytest.Item]) -> None:
    """What was asked for and what it selected, in ``selection.json`` of the report directory: a run that selects
    no case fails, and ``harness run`` names the directory, the ``-m``/``-k`` expressions and the marks there are."""
    selection = config.stash.get(SELECTION_KEY, None)
    if selection is None:
        return
    selection = {
        **selection,
        "selected": sum(_case_of(item) is not None for item in items),
        "markexpr": config.getoption("markexpr", "") or "",
        "keyword": config.getoption("keyword", "") or "",
    }
    config.stash[SELECTION_KEY] = selection
    report_dir = config.getoption("--harness-report-dir")
    if report_dir:
        Path(report_dir).mkdir(parents=True, exist_ok=True)
        _write_json(Path(report_dir) / SELECTION_FILE, selection)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    selection = config.stash.get(SELECTION_KEY, None)
    if selection and not selection.get("selected") and not config.getoption("--harness-dry-run"):
        terminalreporter.write_line(f"harness: {explain_no_selection(selection)}", red=True)


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
    request: pytest.FixtureRequest,
    harness_case: Case,
    harness_log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    harness_image_server: ImageServer,
) -> Iterator[Stack]:
    # The stack may fetch images from the run's image server only: its host:port, not every loopback port.
    extra_env: dict[str, str] = {ENV_MEDIA_HOSTS: harness_image_server.host_port}
    if harness_case.payload == "lora":
        # Not ``tmp_path``: its finalizer needs the tmpdir plugin's own makereport, which an interrupted setup never
        # gets (_pytest/tmpdir.py), and its KeyError would end pytest's session teardown halfway.
        adapters = Path(os.environ.get("HARNESS_LORA_DIR") or tmp_path_factory.mktemp("adapters"))
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
    record["logs"] = str(harness_log_dir)
    # A boot cut short (a timeout, Ctrl-C, SIGTERM) is torn down inside launched(); a test that fails or is
    # interrupted later leaves the with-block through its __exit__, at the latest when pytest finishes the session.
    with (
        watch_case_vram(t.backend, t.profiled_vram_gib, record) as vram,  # sets record["vram"]: the measured peak
        launched(harness_case, harness_log_dir, extra_env=extra_env, launch_dir=launch_dir) as stack,
    ):
        record["phases"] = {"boot_total": round(time.monotonic() - t0, 3), **stack.phases}
        if vram is not None:
            vram.attach(stack.proc.pid)  # the stack leads its own session: its workers are attributed to it
        yield stack
    record["phases"] = {**record.get("phases", {}), "teardown": round(stack.phases.get("teardown", 0.0), 3)}


@pytest.fixture
def harness_gate(request: pytest.FixtureRequest, harness_stack: Stack, harness_image_server: ImageServer) -> GateResult:
    t0 = time.monotonic()
    result = run_gate(harness_stack, harness_image_server)
    record = _record(request.node)
    record["phases"]["checks"] = round(time.monotonic() - t0, 3)
    record["gate"] = result.to_json()
    # JUnit (``--junitxml``) gets the n/a count and reasons per case as testcase properties.
    na = result.not_applicable
    request.node.user_properties.append(("gate_not_applicable", len(na)))
    for item in na:
        request.node.user_properties.append((f"n/a: {item['name']}", item["reason"]))
    return result


StackFactory = Callable[..., Stack]


@pytest.fixture
def mm_stack(
    request: pytest.FixtureRequest,
    harness_log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    harness_image_server: ImageServer,
) -> Iterator[StackFactory]:
    """For users' own tests: ``mm_stack(case_or_id, extra_env=None)`` boots one profile case's stack (a ``Case``,
    or a case id from ``--harness-profile-dir`` / the built-in profiles) and returns its ``Stack``; every stack it
    booted is torn down when the test ends. The test is not parametrized over the profiles, and a control case
    brings no xfail: what the test asserts is its own business."""
    profile_dir = request.config.getoption("--harness-profile-dir") or default_profile_dir()
    launch_dir = request.config.getoption("--harness-launch-dir") or default_launch_dir()
    with contextlib.ExitStack() as stacks:

        def boot(case_or_id: Case | str, extra_env: Mapping[str, str] | None = None) -> Stack:
            case = case_or_id if isinstance(case_or_id, Case) else find_case(load_profiles(profile_dir), case_or_id)
            env = {ENV_MEDIA_HOSTS: harness_image_server.host_port, **(extra_env or {})}
            if case.payload == "lora" and "HARNESS_ADAPTER_DIR" not in env:
                adapters = tmp_path_factory.mktemp("adapters")
                make_lora_adapter(adapters, DEFAULT_ADAPTER, case.model.model)
                env["HARNESS_ADAPTER_DIR"] = str(adapters)
            return stacks.enter_context(launched(case, harness_log_dir, extra_env=env, launch_dir=launch_dir))

        yield boot


def _record(item: pytest.Item) -> dict[str, Any]:
    return item.config.stash.setdefault(RECORD_KEY, {}).setdefault(item.nodeid, {})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if _case_of(item) is None:
        return
    record = _record(item)
    if report.when == "call" or (report.when == "setup" and report.failed):
        record["outcome"] = outcome_of(report)
        if report.failed and report.when == "setup":
            record.update(setup_error(call.excinfo, report))
        record["duration_s"] = round(report.duration, 3)
    if report.when == "teardown":
        _write_record(item, record)


def setup_error(excinfo: pytest.ExceptionInfo[BaseException] | None, report: pytest.TestReport) -> dict[str, Any]:
    """What a report shows for a case that never reached its checks: the error's own message (and, for a stack
    that did not come up, the failing component and its log tail), not pytest's dump of the fixture's source."""
    if excinfo is None:
        return {"error": str(report.longrepr)[-4000:]}
    if isinstance(excinfo.value, LaunchError):
        err = excinfo.value
        return {"error": f"LaunchError: {str(err).splitlines()[0]}", "launch_error": err.to_json()}
    return {"error": excinfo.exconly()[-4000:]}


@pytest.hookimpl(wrapper=True)  # around the runner's sessionfinish, which tears the remaining fixtures down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, None, None]:
    """A case cut short (Ctrl-C, SIGTERM, a failed worker) never gets a teardown report; its record is written
    here, as interrupted, so the report shows it and the run cannot read green, even when another fixture's
    teardown fails on the way out."""
    try:
        return (yield)
    finally:
        written = session.config.stash.get(WRITTEN_KEY, set())
        for nodeid, record in session.config.stash.get(RECORD_KEY, {}).items():
            if "case" in record and nodeid not in written:
                record.setdefault("outcome", "interrupted")
                record.setdefault("error", f"interrupted (pytest exit status {int(exitstatus)})")
                _write_record_of(session.config, nodeid, record)


def outcome_of(report: pytest.TestReport) -> str:
    """passed / failed / xfailed (a control the gate rejected) / xpassed (a control that got through)."""
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed and "XPASS(strict)" in str(report.longrepr):
        return "xpassed"
    return report.outcome


def _write_record(item: pytest.Item, record: dict[str, Any]) -> None:
    _write_record_of(item.config, item.nodeid, record)


def _write_record_of(config: pytest.Config, nodeid: str, record: dict[str, Any]) -> None:
    report_dir = config.getoption("--harness-report-dir")
    if not report_dir or "case" not in record:
        return
    config.stash.setdefault(WRITTEN_KEY, set()).add(nodeid)
    cases = Path(report_dir) / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    _write_json(cases / f"{record['case']}.json", record)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write by rename: a run killed mid-write leaves the old file or the new one, never half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
