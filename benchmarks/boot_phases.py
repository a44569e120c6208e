"""Parallel-phase boot (launch every worker, then wait for all) against serial boot of the same workers.

Boots one profile case through its real launch script twice per round, once with the default two phases and once
with HARNESS_SERIAL_BOOT=1 (start a worker, wait for it, start the next), and prints the phase timings and the
ratio. ``--startup-delay`` adds simulated weight-loading time to every worker, which is where parallel boot wins
on real GPUs; with 0 the figure is dominated by Python start-up on a 2-core machine.

    python benchmarks/boot_phases.py [--profile mm_agg_router_qwen3-vl-2b_4w] [--rounds 3] [--startup-delay 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.profiles import default_profile_dir, find_case, load_profiles
from harness.stack.launch import launched


def boot_once(case, serial: bool, log_dir: Path) -> tuple[float, dict[str, float]]:
    t0 = time.monotonic()
    with launched(case, log_dir, extra_env={"HARNESS_SERIAL_BOOT": "1" if serial else "0"}) as stack:
        total = time.monotonic() - t0
        phases = dict(stack.phases)
    return total, phases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="mm_agg_router_qwen3-vl-2b_4w")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--startup-delay", type=float, nargs="+", default=[0.0, 2.0],
                    help="simulated start-up seconds per worker (one measurement series per value)")
    args = ap.parse_args()
    base = find_case(load_profiles(default_profile_dir(), backend="sim"), args.profile)
    workers = base.effective.workers
    print(f"case {base.id}: {workers} workers + {base.effective.router}; {args.rounds} round(s) per mode")
    for delay in args.startup_delay:
        case = replace(base, extra_script_args=(*base.extra_script_args, "--startup-delay", str(delay)))
        results: dict[str, list[float]] = {"parallel": [], "serial": []}
        worker_phase: dict[str, list[float]] = {"parallel": [], "serial": []}
        for _ in range(args.rounds):
            for mode in ("parallel", "serial"):
                total, phases = boot_once(case, mode == "serial", Path(tempfile.mkdtemp(prefix="mmharness-boot-")))
                results[mode].append(total)
                worker_phase[mode].append(phases.get("boot_workers_serial")
                                          or phases.get("launch_workers", 0) + phases.get("wait_workers", 0))
        par, ser = statistics.median(results["parallel"]), statistics.median(results["serial"])
        wpar, wser = statistics.median(worker_phase["parallel"]), statistics.median(worker_phase["serial"])
        print(f"startup delay {delay:.1f} s/worker: workers phase parallel {wpar:.2f} s vs serial {wser:.2f} s "
              f"({wser / wpar:.2f}x); whole stack to HARNESS_READY parallel {par:.2f} s vs serial {ser:.2f} s "
              f"({ser / par:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
