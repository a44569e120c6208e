"""Run the pre_merge gate suite N times in a row and report its wall time and stability.

The pre_merge suite's promise: under 2 minutes on a 2-core machine, green every time, and every degraded control
rejected every time (a flaky gate is worse than none). Each run writes its normal report under --reports-dir.

    python benchmarks/gate_stability.py [--runs 20] [-m pre_merge]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("-m", dest="marks", default="pre_merge")
    ap.add_argument("--reports-dir", type=Path, default=None)
    args = ap.parse_args()
    reports = args.reports_dir or Path(tempfile.mkdtemp(prefix="mmharness-stability-"))
    walls, green, rejected_every_time = [], 0, True
    print(f"{args.runs} runs of `harness run -m {args.marks}`; reports in {reports}")
    for i in range(1, args.runs + 1):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "-m", args.marks, "--reports-dir",
                               str(reports), "-q"], capture_output=True, text=True)
        wall = time.monotonic() - t0
        run = json.loads((reports / "latest" / "run.json").read_text())
        totals = run["totals"]
        controls = sum(1 for c in run["cases"] if c.get("expect") == "fail")
        ok = proc.returncode == 0 and totals["green"]
        green += ok
        rejected_every_time &= totals["controls_rejected"] == controls
        walls.append(wall)
        print(f"run {i:2d}: {'green' if ok else 'RED'}  {wall:6.1f} s  cases {totals['cases']}  "
              f"controls rejected {totals['controls_rejected']}/{controls}", flush=True)
    print(f"green {green}/{args.runs}; controls rejected every time: {rejected_every_time}; wall time min "
          f"{min(walls):.1f} s, median {statistics.median(walls):.1f} s, max {max(walls):.1f} s (target < 120 s)")
    return 0 if green == args.runs and rejected_every_time else 1


if __name__ == "__main__":
    sys.exit(main())
