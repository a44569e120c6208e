"""``harness``: run the gates, boot a stack, plan, benchmark, summarise.

harness run [-m pre_merge] [--backend sim|vllm] [pytest args...]   gates -> reports/<ts>/ (+ reports/latest)
harness plan [-m EXPR] [--max-vram-gib N]                         print the cases a run would execute
harness stack up --profile CASE_ID                                boot one case's stack and wait (Ctrl-C ends it)
harness bench worker|proxy|boot [...]                             benchmarks (figures side by side)
harness report [RUN_DIR]                                          re-render a run's summary
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness.profiles import PACKAGE_DIR, default_profile_dir, find_case, load_profiles

if TYPE_CHECKING:
    from harness.gpu.devices import GpuSpec
    from harness.gpu.scheduler import Policy

GATES = Path(__file__).resolve().parent / "gates"


def reports_root() -> Path:
    """``$HARNESS_REPORTS_DIR``, else ``reports/`` in the current directory (an installed harness has no checkout)."""
    return Path(os.environ.get("HARNESS_REPORTS_DIR") or Path.cwd() / "reports")


def new_run_dir(root: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = root / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    latest = root / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name)
    return run_dir


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


def _call_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd``, passing SIGTERM/SIGINT on to it, so a cancelled CI job still tears its stacks down and the
    report below is still written."""
    proc = subprocess.Popen(cmd, env=env)
    previous = {
        sig: signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.report.summary import write_summary

    packed = args.gpus or args.pack or args.shard
    if packed:
        from harness.gpu.runner import check_packing_args

        try:
            spec, shard_of = check_packing_args(args.backend, args.gpus, args.shard)
            policy = _packing_policy(args, "harness run")
        except ValueError as exc:
            msg = str(exc)
            print(msg if msg.startswith("harness run") else f"harness run: {msg}", file=sys.stderr)
            return 2
    run_dir = new_run_dir(Path(args.reports_dir) if args.reports_dir else reports_root())
    if packed:
        rc = _run_packed(args, extra, run_dir, spec, shard_of, policy)
    else:
        cmd = gates_pytest(
            args.backend,
            f"--junitxml={run_dir / 'junit.xml'}",
            f"--harness-report-dir={run_dir}",
            "-o",
            f"junit_suite_name=mmharness-{args.backend}",
            *extra,
        )
        print(f"harness run -> {run_dir}\n$ {' '.join(cmd)}", flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        rc = _call_forwarding_signals(cmd, env)
    t = write_summary(run_dir, title=f"mmharness {args.backend} gates")
    summary = (run_dir / "summary.md").read_text()
    print(summary)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as fh:
            fh.write(summary)
    print(f"report: {run_dir / 'summary.md'} (latest: {run_dir.parent / 'latest'})")
    if rc == 5:
        print("harness run: no case selected", file=sys.stderr)
        return 1
    return rc if rc else (0 if t.green else 1)


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
    cmd = gates_pytest(args.backend, "--harness-dry-run", "-q", *extra)
    rc = subprocess.call(cmd)
    return 0 if rc in (0, 5) else rc


def cmd_stack_up(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.stack.launch import LaunchError, launched

    cases = load_profiles(default_profile_dir(), backend=args.backend)
    try:
        case = find_case(cases, args.profile)
    except KeyError as exc:
        print(f"harness stack up: {exc.args[0]}", file=sys.stderr)
        return 2
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix=f"mmharness-{case.id}-"))
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        with launched(case, log_dir) as stack:
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
    print("stack stopped")
    return 0


def cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    bench = PACKAGE_DIR.parent / "benchmarks"  # the project's own benchmarks live in its checkout
    if not bench.is_dir():
        print("harness bench: the project benchmarks ship with the source checkout, not the wheel", file=sys.stderr)
        return 2
    scripts = {
        "worker": "sim_worker_rps.py",
        "proxy": "proxy_overhead.py",
        "boot": "boot_phases.py",
        "gate": "gate_stability.py",
    }
    return subprocess.call([sys.executable, str(bench / scripts[args.what]), *extra])


def cmd_report(args: argparse.Namespace, extra: list[str]) -> int:
    from harness.report.summary import write_summary

    run_dir = Path(args.run_dir) if args.run_dir else reports_root() / "latest"
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
    up.set_defaults(func=cmd_stack_up)
    bench = sub.add_parser("bench", help="run a benchmark (extra args go to it)")
    bench.add_argument("what", choices=("worker", "proxy", "boot", "gate"))
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
    report = sub.add_parser("report", help="re-render a run's summary")
    report.add_argument("run_dir", nargs="?", default=None)
    report.set_defaults(func=cmd_report)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    return int(args.func(args, extra))


if __name__ == "__main__":
    sys.exit(main())
