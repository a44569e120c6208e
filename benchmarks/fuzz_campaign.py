"""The long bad-input campaign: many seeded requests per category against a simulated worker and the proxy.

The same generator and judge as ``tests/e2e/test_fuzz.py`` (``harness.server.fuzz``), with more requests and
seeds; prints tried / failed per category for each target, the status mix, the slowest answer and the first
failures. Exit status 1 when anything failed or a server stopped serving.

    python benchmarks/fuzz_campaign.py [--requests 9000] [--seeds 3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.server.fuzz import cases, fuzz_stack, run_campaign, still_serving


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=9000, help="per target and seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-seconds", type=float, default=2.0)
    args = ap.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="fuzz-") as root, fuzz_stack(Path(root)) as t:
        for target, port in (("worker", t.worker_port), ("proxy", t.proxy_port)):
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                todo = list(cases(seed, args.requests, t.ctx))
                report = asyncio.run(
                    run_campaign("127.0.0.1", port, todo, concurrency=args.concurrency, max_seconds=args.max_seconds)
                )
                took = time.perf_counter() - t0
                print(report.table(f"{target} seed={seed} ({took:.1f}s, {len(todo) / took:.0f} req/s)"))
                serving = asyncio.run(still_serving("127.0.0.1", port))
                print(f"  still serving: {'yes' if serving is None else serving}")
                bad += report.total_failed + (serving is not None)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
