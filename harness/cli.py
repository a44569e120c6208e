"""``harness``: run the gates, boot a stack, plan, benchmark, summarise.

harness run [-m pre_merge] [--backend sim|vllm] [pytest args...]   gates -> reports/<ts>/ (+ reports/latest)
harness plan [-m EXPR] [--max-vram-gib N]                         print the cases a run would execute
harness plan --gpus 8x80 [--shard i/n]                            the packed schedule and its makespan vs a bound
harness run --gpus 2x80 | --pack [--shard i/n]                    run the cases packed onto (simulated) GPUs
harness vram CASE_ID                                              measure VRAM, bisect the KV cap, print the profile
harness run --url URL [--worker-url URL ...] [--model M] [...]     gate a stack that is already running
harness stack up --profile CASE_ID [--port P] [--profile-dir D]   boot one case's stack and wait (Ctrl-C ends it)
harness bench CASE_ID | --url URL [workload, load shape]          load test -> reports/<ts>/ (see bench --help)
harness report [RUN_DIR] | harness report A B [--threshold 0.1]    re-render a run's summary; compare two bench runs
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.profiles import default_profile_dir, find_case, load_profiles
from harness.stack.processes import die_with_parent

if TYPE_CHECKING:
    from harness.gpu.devices import GpuSpec
    from harness.gpu.scheduler import Policy

GATES = Path(__file__).resolve().parent / "gates"


def reports_root() -> Path:
    """``$HARNESS_REPORTS_DIR``, else ``reports/`` in the current directory (an installed harness has no checkout)."""
    return Path(os.environ.get("HARNESS_REPORTS_DIR") or Path.cwd() / "reports")


def new_run_dir(root: Path, *, latest: bool = True) -> Path:
    """A fresh ``root/<timestamp>[-n]`` directory, claimed atomically: ``mkdir`` without ``exist_ok`` either
    creates it or fails, so two runs started in the same second never share one (checking ``exists()`` first
    raced). ``latest`` moves to it now unless ``latest=False`` (``harness run`` moves it once the run has run)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        run_dir = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        if latest:
            link_latest(run_dir)
        return run_dir
    raise RuntimeError(f"no free run directory name for {stamp} in {root}")


def link_latest(run_dir: Path) -> None:
    """Point ``<root>/latest`` at ``run_dir``, atomically: a new link under a unique name renamed over the old one,
    so a concurrent reader (or run) never finds ``latest`` missing or half made."""
    tmp = run_dir.parent / f".latest.{os.getpid()}.{run_dir.name}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, run_dir.parent / "latest")


def gates_pytest(backend: str, *args: str, target: str | None = None) -> list[str]:
    """The pytest command line that runs the packaged gate suite for ``backend`` (or one node id of it)."""
    return [
        sys.executable,
        "-m",
        "pytest",
        target or str(GATES),
        "-p",
        "no:cacheprovider",
        "--backend",
        backend,
        "--rootdir",
        str(GATES),
        *args,
    ]


@dataclass
class Forwarded:
    """Signals ``harness run`` received while pytest ran (the first one decides its exit status)."""

    first: signal.Signals | None = None
    count: int = 0


def _call_forwarding_signals(cmd: list[str], env: dict[str, str], got: Forwarded) -> int:
    """Run pytest in its own session, and pass SIGINT/SIGTERM on to its process group once.

    Its own session: a terminal's Ctrl-C reaches only this process, not pytest as well (it used to get SIGINT
    twice, once from the terminal and once from here, and the second interrupted its teardown: hundreds of lines
    of tracebacks). The parent-death signal: a SIGKILLed ``harness run`` still ends pytest, as SIGTERM, which the
    plugin turns into an interrupt that tears the stacks down. A second signal only says teardown is under way;
    a third SIGKILLs pytest's group (its stacks then get their own parent-death signal)."""
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))

    def forward(signum: int, _frame: object) -> None:
        got.count += 1
        if got.first is None:
            got.first = signal.Signals(signum)
        if got.count == 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)
        elif got.count == 2:
            print("\nharness run: tearing the stacks down; signal again to kill pytest", file=sys.stderr, flush=True)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # a SIGINT that arrived before the handler was installed
                forward(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def url_mode_args(args: argparse.Namespace) -> list[str]:
    """``harness run --url``'s flags as the plugin's options, checked here (an ``AttachError`` names the flag)."""
    from harness.stack.attach import spec_from_options, url_case

    pairs = [f"records={args.records}", f"block_size={args.block_size}", f"payload={args.payload}",
             f"expect={args.expect}", f"startup_line={'yes' if args.startup_line else 'no'}",
             f"engine_sees_images={'no' if args.engine_blind else 'yes'}", f"timeout_s={args.url_timeout}",
             f"engine_text={'no' if args.engine_no_text else 'yes'}",
             f"workers_serve_openai={'no' if args.workers_metrics_only else 'yes'}",
             f"worker_metrics={'no' if args.no_worker_metrics else 'yes'}"]
    if args.attribution:
        pairs.append("attribution=" + ",".join(args.attribution))
    for key in ("router_log", "family", "workers"):
        if getattr(args, key) is not None:
            pairs.append(f"{key}={getattr(args, key)}")
    spec = spec_from_options(args.url, args.worker_url, args.model, pairs)
    url_case(spec)  # every field checked before pytest starts
    out = [f"--harness-url={spec.url}", f"--harness-model={spec.model}"]
    out += [f"--harness-worker-url={w}" for w in spec.worker_urls]
    return out + [f"--harness-attach={p}" for p in pairs]


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.report.runinfo import explain_no_selection, load_selection, start_info, utc_now
    from harness.report.summary import run_green, write_summary

    packed = args.gpus or args.pack or args.shard
    if args.url:
        try:
            extra = [*url_mode_args(args), *extra]
        except ValueError as exc:
            print(f"harness run: {exc}", file=sys.stderr)
            return 2
        if packed:
            print("harness run: --url gates one running stack; --gpus/--pack/--shard do not apply", file=sys.stderr)
            return 2
    if packed:
        from harness.gpu.runner import check_packing_args

        try:
            spec, shard_of = check_packing_args(args.backend, args.gpus, args.shard)
            policy = _packing_policy(args, "harness run")
        except ValueError as exc:
            msg = str(exc)
            print(msg if msg.startswith("harness run") else f"harness run: {msg}", file=sys.stderr)
            return 2
    run_dir = new_run_dir(Path(args.reports_dir) if args.reports_dir else reports_root(), latest=False)
    got = Forwarded()
    cmd = gates_pytest(
        args.backend,
        f"--junitxml={run_dir / 'junit.xml'}",
        f"--harness-report-dir={run_dir}",
        "-o",
        f"junit_suite_name=mmharness-{args.backend}",
        *extra,
    )
    info = start_info(getattr(args, "argv", sys.argv[1:]), cmd, args.backend, Path(__file__).parent)
    if packed:
        rc = _run_packed(args, extra, run_dir, spec, shard_of, policy)
    else:
        print(f"harness run -> {run_dir}\n$ {' '.join(cmd)}", flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        rc = _call_forwarding_signals(cmd, env, got)
    selection = load_selection(run_dir)
    info.update(ended=utc_now(), exit_code=rc, interrupted=got.first.name if got.first else None)
    if selection is not None:
        info["selection"] = selection
        if not selection.get("selected"):
            info["no_selection"] = explain_no_selection(selection)
    t = write_summary(run_dir, title=f"mmharness {args.backend} gates", run=info)
    summary = (run_dir / "summary.md").read_text()
    print(summary)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as fh:
            fh.write(summary)
    usage_error = rc in (4, 5) or t.cases == 0  # nothing ran: `latest` keeps pointing at the last real run
    if not usage_error:
        link_latest(run_dir)
    print(f"report: {run_dir / 'summary.md'}" + ("" if usage_error else f" (latest: {run_dir.parent / 'latest'})"))
    if got.first is not None:
        return 128 + got.first  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports it
    if rc < 0:
        return 128 - rc  # pytest itself was killed by a signal
    if rc == 5 or (rc == 0 and t.cases == 0):
        print(f"harness run: {info.get('no_selection') or 'no case ran'}", file=sys.stderr)
        return 1
    return rc if rc else (0 if run_green(t, info) else 1)


def _packing_policy(args: argparse.Namespace, prog: str) -> Policy:
    from harness.gpu.plan import policy_from

    return policy_from(args.backend, args.cpus, args.stagger, args.share_margin, prog)


def _run_packed(
    args: argparse.Namespace,
    extra: list[str],
    run_dir: Path,
    spec: GpuSpec | None,
    shard_of: tuple[int, int] | None,
    policy: Policy,
) -> int:
    """Each selected case in its own pytest process, packed onto the node's (or simulated) GPUs."""
    from harness.gpu.runner import GATE_NODE, main_run, strip_xdist

    def case_cmd(case_id: str, junit: Path) -> list[str]:
        own = (f"--junitxml={junit}", f"--harness-report-dir={run_dir}", "-q", *strip_xdist(extra))
        return gates_pytest(args.backend, *own, target=str(GATES / GATE_NODE.format(case_id)))

    print(f"harness run (packed) -> {run_dir}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a cancelled job still ends every case's group
    return main_run(
        backend=args.backend,
        spec=spec,
        shard_of=shard_of,
        policy=policy,
        pytest_cmd=gates_pytest(args.backend, *extra),
        pytest_args=extra,
        case_cmd=case_cmd,
        run_dir=run_dir,
        reports_root=run_dir.parent,
        log=lambda line: print(line, flush=True),
    )


def cmd_plan(args: argparse.Namespace, extra: list[str]) -> int:
    if args.gpus or args.shard:
        from harness.gpu.plan import PlanError, main_plan

        try:
            return main_plan(
                backend=args.backend,
                gpus=args.gpus,
                shard_text=args.shard,
                policy=_packing_policy(args, "harness plan"),
                pytest_cmd=gates_pytest(args.backend, *extra),
                pytest_args=extra,
                reports_root=reports_root(),
            )
        except (ValueError, PlanError) as exc:
            msg = str(exc)
            print(msg if msg.startswith("harness plan") else f"harness plan: {msg}", file=sys.stderr)
            return 2
    from harness.report.runinfo import explain_no_selection, load_selection

    with tempfile.TemporaryDirectory(prefix="mmharness-plan-") as tmp:
        cmd = gates_pytest(args.backend, "--harness-dry-run", f"--harness-report-dir={tmp}", "-q", *extra)
        rc = subprocess.call(cmd)
        selection = load_selection(Path(tmp))
    if rc not in (0, 5):
        return rc
    if selection is not None and not selection.get("selected"):
        print(f"harness plan: {explain_no_selection(selection)}", file=sys.stderr)
        return 1
    return 0


def cmd_stack_up(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.stack.launch import LaunchError, launched

    profile_dir = Path(args.profile_dir) if args.profile_dir else default_profile_dir()
    if not profile_dir.is_dir() or (args.launch_dir and not Path(args.launch_dir).is_dir()):
        bad = ("--profile-dir", profile_dir) if not profile_dir.is_dir() else ("--launch-dir", args.launch_dir)
        print(f"harness stack up: {bad[0]}: {bad[1]} is not a directory", file=sys.stderr)
        return 2
    if args.port is not None and not 0 < args.port < 65536:
        print(f"harness stack up: --port: {args.port} is not a TCP port", file=sys.stderr)
        return 2
    try:
        cases = load_profiles(profile_dir, backend=args.backend)
        case = find_case(cases, args.profile)
    except KeyError as exc:
        print(f"harness stack up: {exc.args[0]}", file=sys.stderr)
        return 2
    except (ValueError, ImportError, SyntaxError, OSError) as exc:
        print(f"harness stack up: --profile-dir {profile_dir}: {exc}", file=sys.stderr)
        return 2
    launch_kw = {"launch_dir": Path(args.launch_dir) if args.launch_dir else None, "port": args.port}
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix=f"mmharness-{case.id}-"))
    stop = {"flag": False}

    def on_sigterm(signum: int, _frame: object) -> None:
        if not stop["flag"]:  # once: a second SIGTERM must not cut the teardown short
            stop["flag"] = True
            raise KeyboardInterrupt  # like Ctrl-C: a boot in progress is torn down, a serving stack is stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with launched(case, log_dir, **launch_kw) as stack:
            phases = ", ".join(f"{k}={v:.2f}s" for k, v in stack.phases.items())
            print(
                f"{case.id} is up: {stack.url}\n  workers: {' '.join(stack.worker_urls)}\n  logs: {log_dir}\n"
                f"  phases: {phases}\nCtrl-C to stop.",
                flush=True,
            )
            try:
                while not stop["flag"] and stack.proc.alive:
                    time.sleep(0.2)
            except KeyboardInterrupt:
                pass
            if not stack.proc.alive:
                print(f"stack exited with code {stack.proc.poll()}:\n{stack.proc.log_tail()}", file=sys.stderr)
                return 1
    except LaunchError as exc:
        print(f"harness stack up: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # during boot (start_stack tore the half-booted stack down) or teardown (SIGKILLed)
        print("harness stack up: interrupted; stack stopped", file=sys.stderr)
        return 130
    print("stack stopped")
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.load.cli import main as bench_main

    if extra:
        print(f"harness bench: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return 2
    run_dir = Path(args.out) if args.out else new_run_dir(reports_root())
    return bench_main(args, run_dir, ["harness", *sys.argv[1:]])


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.report.summary import write_summary

    if args.other is not None:
        from harness.report.bench import load_summary
        from harness.report.compare import compare, render

        try:
            a, b = load_summary(Path(args.run_dir)), load_summary(Path(args.other))
        except (OSError, ValueError) as exc:
            print(f"harness report: {exc}", file=sys.stderr)
            return 2
        deltas = compare(a, b, args.threshold)
        print(render(deltas, args.threshold))
        return 1 if any(d.regression for d in deltas) else 0
    run_dir = Path(args.run_dir) if args.run_dir else reports_root() / "latest"
    if (run_dir / "summary.json").is_file() and not (run_dir / "cases").is_dir():
        from harness.report.bench import BenchReport, load_summary

        try:
            data = load_summary(run_dir)
        except ValueError as exc:
            print(f"harness report: {exc}", file=sys.stderr)
            return 2
        report = BenchReport(run_dir, data["provenance"], data["config"], data["workload"], data["runs"],
                             data.get("notes", []), data.get("status", "complete"))
        report.write()
        print((run_dir / "summary.md").read_text())
        return 0
    if not (run_dir / "cases").is_dir():
        print(f"harness report: {run_dir} has no cases/ (not a run directory)", file=sys.stderr)
        return 2
    write_summary(run_dir.resolve())
    print((run_dir / "summary.md").read_text())
    return 0


def cmd_assets(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.mm.assets import AssetStore

    store = AssetStore(Path(args.dir)).ensure()
    if args.assets_command == "put":
        for name in args.files:
            try:
                data = Path(name).read_bytes()
            except OSError as exc:
                print(f"harness assets put: {name}: {exc.strerror}", file=sys.stderr)
                return 2
            print(f"{store.put(data)}  {name}")
        return 0
    result = store.sweep(args.max_age)
    print(f"removed {result.removed} derived artifact(s), kept {result.kept}; {result.sources} source image(s) kept")
    return 0


def cmd_vram(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.gpu.devices import GpuUnavailable
    from harness.gpu.profiler import main_vram

    if args.max_trials < 1 or args.tolerance_mib <= 0:
        print("harness vram: --max-trials must be >= 1 and --tolerance-mib > 0", file=sys.stderr)
        return 2
    try:
        case = find_case(load_profiles(default_profile_dir(), backend=args.backend), args.case_id)
        prof, text = main_vram(
            case,
            log_dir=Path(args.log_dir) if args.log_dir else None,
            max_trials=args.max_trials,
            tolerance_mib=args.tolerance_mib,
        )
    except KeyError as exc:
        print(f"harness vram: {exc.args[0]}", file=sys.stderr)
        return 2
    except GpuUnavailable as exc:
        print(f"harness vram: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0 if prof.recommendation else 1


def _add_packing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cpus", type=float, default=None, help="CPU budget for concurrent cases (default: cgroup quota)")
    p.add_argument("--stagger", type=float, default=None, help="seconds between starts on one GPU (default 10)")
    p.add_argument("--share-margin", type=float, default=None, help="fraction of a shared GPU kept free (0.15)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness",
        description="Multimodal LLM routing harness: run the gates, boot a stack, plan, benchmark, summarise.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gate suite and write a report (extra args go to pytest)")
    run.add_argument("--backend", choices=("sim", "vllm"), default="sim")
    run.add_argument("--reports-dir", default=None)
    run.add_argument("--gpus", default=None, help="pack the cases onto COUNTxGIB simulated GPUs, e.g. 2x80")
    run.add_argument("--pack", action="store_true", help="pack the cases onto this node's GPUs (NVML)")
    run.add_argument("--shard", default=None, help="run only shard i of n (by estimated duration), packed")
    _add_packing_args(run)
    url = run.add_argument_group("URL mode", "gate a stack that is already running, instead of the profile cases")
    url.add_argument("--url", default=None, help="the stack's front door, e.g. http://127.0.0.1:8000")
    url.add_argument("--worker-url", action="append", default=[], help="one of its workers (repeat; for /metrics)")
    url.add_argument("--model", default=None, help="the model to request (default: the first of its /v1/models)")
    url.add_argument("--records", default="none", help="its [ROUTING] record format: harness, dynamo or none")
    url.add_argument("--router-log", default=None, help="the router's log file (for its records and start-up line)")
    url.add_argument("--startup-line", action="store_true", help="it logs 'MM-aware KV routing enabled model=...'")
    url.add_argument("--attribution", action="append", default=[],
                     help="how a reply names its worker: header[:NAME], nvext, metrics (default header,metrics)")
    url.add_argument("--engine-blind", action="store_true",
                     help="its engine's cached_tokens ignore image content (a mocker): cache checks are n/a")
    url.add_argument("--engine-no-text", action="store_true", help="its replies carry no text (Dynamo's mocker)")
    url.add_argument("--workers-metrics-only", action="store_true",
                     help="the --worker-url serve /metrics only, not the OpenAI API (Dynamo's mockers)")
    url.add_argument("--no-worker-metrics", action="store_true",
                     help="the workers' /metrics have no vllm:prefix_cache_* counters (Dynamo's mockers)")
    url.add_argument("--block-size", type=int, default=16, help="its KV block size (default 16)")
    url.add_argument("--family", default=None, help="the model's image-token family (default: from the model id)")
    url.add_argument("--payload", default="image_url", help="image_url, base64, multi_image, multi_turn")
    url.add_argument("--workers", type=int, default=None, help="its worker count (default: the --worker-url count)")
    url.add_argument("--expect", default="pass", help="pass, or fail for a stack the gate must reject")
    url.add_argument("--url-timeout", type=float, default=60.0, help="seconds to wait for it and for each request")
    run.set_defaults(func=cmd_run)
    plan = sub.add_parser("plan", help="print the cases a run would execute (extra args go to pytest)")
    plan.add_argument("--backend", choices=("sim", "vllm"), default="sim")
    plan.add_argument("--gpus", default=None, help="print the packed schedule on a node of COUNTxGIB GPUs, e.g. 8x80")
    plan.add_argument("--shard", default=None, help="only shard i of n (by estimated duration), e.g. 1/4")
    _add_packing_args(plan)
    plan.set_defaults(func=cmd_plan)
    vram = sub.add_parser("vram", help="measure a case's VRAM, bisect its KV cap, print the profile to paste")
    vram.add_argument("case_id", help="e.g. mm_agg_qwen3-vl-2b")
    vram.add_argument("--backend", choices=("sim", "vllm"), default="sim")
    vram.add_argument("--max-trials", type=int, default=8, help="bisection runs, the first at the case's own cap")
    vram.add_argument("--tolerance-mib", type=float, default=64.0, help="stop bisecting within this many MiB")
    vram.add_argument("--log-dir", default=None)
    vram.set_defaults(func=cmd_vram)
    stack = sub.add_parser("stack", help="boot a stack for local poking")
    stack_sub = stack.add_subparsers(dest="stack_command", required=True)
    up = stack_sub.add_parser("up", help="boot one case's stack and wait")
    up.add_argument("--profile", required=True, help="case id, e.g. mm_agg_router_qwen3-vl-2b")
    up.add_argument("--backend", choices=("sim", "vllm"), default="sim")
    up.add_argument("--log-dir", default=None)
    up.add_argument("--profile-dir", default=None, help="profile files to find the case in (default: built-in)")
    up.add_argument("--launch-dir", default=None, help="launch scripts to run it with (default: built-in)")
    up.add_argument("--port", type=int, default=None, help="the front door's port (default: a free one)")
    up.set_defaults(func=cmd_stack_up)
    bench = sub.add_parser(
        "bench",
        help="load test a case's stack or a running URL: workloads, load shapes, --compare, reports",
        description="Load test: boots CASE_ID's stack (or targets --url), sends a seeded multimodal workload, "
        "reports latency, throughput, goodput, the hit-rate triad and per-worker attribution to reports/<ts>/. "
        "The project's own benchmarks run with `make bench`.",
    )
    from harness.load.cli import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    assets = sub.add_parser("assets", help="manage a run-scoped asset directory (mmfile:// references)")
    assets_sub = assets.add_subparsers(dest="assets_command", required=True)
    put = assets_sub.add_parser("put", help="store images and print their mmfile:// references")
    put.add_argument("dir")
    put.add_argument("files", nargs="+")
    sweep = assets_sub.add_parser("sweep", help="evict derived artifacts older than --max-age (never sources)")
    sweep.add_argument("dir")
    sweep.add_argument("--max-age", type=float, required=True, help="seconds")
    assets.set_defaults(func=cmd_assets)
    report = sub.add_parser("report", help="re-render a run's summary, or compare two bench runs (A B)")
    report.add_argument("run_dir", nargs="?", default=None)
    report.add_argument("other", nargs="?", default=None, help="a second bench report: compare A with B")
    report.add_argument("--threshold", type=float, default=0.10, help="regression threshold (fraction)")
    report.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # run.json records the command line
    return int(args.func(args, extra))


if __name__ == "__main__":
    sys.exit(main())
