"""Port allocation across concurrent processes: one run-wide lock, so no port is handed to two of them, and each
reservation counts while its owner lives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from harness.stack import ports
from harness.stack.ports import port_is_free

pytestmark = pytest.mark.e2e

DEADLINE_S = 15.0


@pytest.fixture
def ports_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "ports"
    monkeypatch.setenv(ports.ENV_DIR, str(d))
    return d


def reserved_now(ports_dir: Path) -> dict[str, list[float]]:
    return ports._load(ports_dir / "reserved.json")


def raw_file(ports_dir: Path) -> dict[str, list[float]]:
    return json.loads((ports_dir / "reserved.json").read_text())


def bindable_window(size: int) -> tuple[int, int]:
    for base in range(ports.PORT_RANGE[0] + 1000, ports.PORT_RANGE[1] - size, 997):
        if all(port_is_free(p) for p in range(base, base + size)):
            return base, base + size
    pytest.skip(f"no {size} consecutive free ports in {ports.PORT_RANGE}")


# --- contention ------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from harness.stack import ports
    ports.PORT_RANGE = (int(sys.argv[1]), int(sys.argv[2]))
    go = Path(sys.argv[3])
    deadline = time.monotonic() + 15
    while not go.exists():  # start together
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
    print(json.dumps(ports.allocate_ports(20)), flush=True)
    sys.stdin.read()  # stay alive (keeping the reservation) until every process has allocated
    """
)


def test_concurrent_processes_get_distinct_ports(tmp_path: Path, ports_dir: Path) -> None:
    # A narrow window (6 x 20 ports out of 160) makes a collision near certain if allocation were not serialised.
    lo, hi = bindable_window(160)
    go = tmp_path / "go"
    env = {**os.environ, ports.ENV_DIR: str(ports_dir)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(lo), str(hi), str(go)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(6)
    ]
    go.touch()
    results: list[list[int]] = []
    try:
        for p in procs:  # every child holds its ports (it is alive) until all have answered
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line, p.stderr.read() if p.stderr else ""
            results.append(json.loads(line))
        raw = raw_file(ports_dir)
        live = reserved_now(ports_dir)
    finally:
        for p in procs:
            p.communicate(timeout=DEADLINE_S)
    assert [p.returncode for p in procs] == [0] * len(procs)
    everything = [port for got in results for port in got]
    assert all(len(got) == 20 for got in results)
    dupes = [port for port, n in Counter(everything).items() if n > 1]
    assert dupes == [], f"ports handed to more than one process: {dupes}"
    assert all(lo <= port < hi for port in everything)
    # Each child's reservation is recorded under its own pid and counts while the child lives ...
    assert {int(raw[str(port)][0]) for port in everything} == {p.pid for p in procs}
    assert set(live) == {str(port) for port in everything}
    # ... and since every child has exited, none of them counts any more.
    assert reserved_now(ports_dir) == {}


