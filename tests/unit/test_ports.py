"""Port allocation: distinct bindable ports outside the ephemeral range, reservations that die with their owner,
release, and a reservation file never seen half written. Concurrent processes: tests/e2e/test_ports_processes.py."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from harness.stack import ports
from harness.stack.ports import allocate_ports, port_is_free, release_ports

DEADLINE_S = 15.0


@pytest.fixture(autouse=True)
def ports_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own reservation state, so nothing leaks between tests or into other runs."""
    d = tmp_path / "ports"
    monkeypatch.setenv(ports.ENV_DIR, str(d))
    return d


def reserved_now(ports_dir: Path) -> dict[str, list[float]]:
    """The reservations that count (live owner, within TTL)."""
    return ports._load(ports_dir / "reserved.json")


def raw_file(ports_dir: Path) -> dict[str, list[float]]:
    return json.loads((ports_dir / "reserved.json").read_text())


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except OSError:
        return 32768, 60999  # Linux's default


def bindable_window(size: int) -> tuple[int, int]:
    """A run of ``size`` consecutive bindable ports inside PORT_RANGE."""
    for base in range(ports.PORT_RANGE[0] + 1000, ports.PORT_RANGE[1] - size, 997):
        if all(port_is_free(p) for p in range(base, base + size)):
            return base, base + size
    pytest.skip(f"no {size} consecutive free ports in {ports.PORT_RANGE}")


def dead_pid() -> int:
    """A pid no process can have: above the kernel's pid_max (unit tests start no process to get a dead one)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1  # Linux's largest pid_max is 2**22


# --- basics ----------------------------------------------------------------------------------------------------


def test_ports_distinct_bindable_and_outside_ephemeral_range(ports_dir: Path) -> None:
    got = allocate_ports(30)
    assert len(got) == 30 and len(set(got)) == 30
    lo, hi = ephemeral_range()
    for port in got:
        assert ports.PORT_RANGE[0] <= port < ports.PORT_RANGE[1]
        assert not lo <= port <= hi, f"{port} is in the ephemeral range {lo}-{hi}"
    # Bindable: nothing holds them (allocation reserves, it does not bind).
    socks = []
    try:
        for port in got:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", port))
    finally:
        for s in socks:
            s.close()


def test_allocation_is_reserved_for_this_process(ports_dir: Path) -> None:
    got = allocate_ports(4)
    res = reserved_now(ports_dir)
    assert set(res) == {str(p) for p in got}
    assert {int(entry[0]) for entry in res.values()} == {os.getpid()}


def test_owner_pid_recorded(ports_dir: Path) -> None:
    owner = os.getppid()  # another live process: the one that started this test run
    got = allocate_ports(2, owner_pid=owner)
    assert {int(raw_file(ports_dir)[str(p)][0]) for p in got} == {owner}
    assert set(reserved_now(ports_dir)) == {str(p) for p in got}  # a live owner keeps them


def test_reserved_ports_not_handed_out_again(ports_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lo, hi = bindable_window(12)
    monkeypatch.setattr(ports, "PORT_RANGE", (lo, hi))
    first = allocate_ports(6)
    second = allocate_ports(6)
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == list(range(lo, hi))
    with pytest.raises(RuntimeError, match="could not find 1 free ports"):
        allocate_ports(1)  # every port of the range is reserved by a live process


def test_bound_port_skipped(ports_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lo, hi = bindable_window(2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", lo))
        s.listen()
        assert not port_is_free(lo)
        monkeypatch.setattr(ports, "PORT_RANGE", (lo, hi))
        assert allocate_ports(1) == [lo + 1]
        with pytest.raises(RuntimeError):
            allocate_ports(1)
    assert port_is_free(lo)


# --- reclaiming and releasing ----------------------------------------------------------------------------------


def test_dead_owner_reservations_reclaimed(ports_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = dead_pid()
    stale = allocate_ports(3, owner_pid=pid)
    assert set(raw_file(ports_dir)) == {str(p) for p in stale}  # written ...
    assert reserved_now(ports_dir) == {}  # ... but not counted: the owner is gone
    mine = allocate_ports(2)
    raw = raw_file(ports_dir)
    assert set(raw) == {str(p) for p in mine}  # the next write drops them
    # and a fully reserved window becomes available again once its owner is dead
    lo, hi = bindable_window(3)
    monkeypatch.setattr(ports, "PORT_RANGE", (lo, hi))
    taken = allocate_ports(3, owner_pid=dead_pid())
    assert sorted(allocate_ports(3)) == sorted(taken) == [lo, lo + 1, lo + 2]


def test_expired_reservation_reclaimed(ports_dir: Path) -> None:
    ports_dir.mkdir(parents=True, exist_ok=True)
    old = time.time() - ports.RESERVATION_TTL_S - 1
    (ports_dir / "reserved.json").write_text(
        json.dumps({"25000": [os.getpid(), old], "25001": [os.getpid(), time.time()]})
    )
    assert set(reserved_now(ports_dir)) == {"25001"}


def test_corrupt_reservation_file_tolerated(ports_dir: Path) -> None:
    ports_dir.mkdir(parents=True, exist_ok=True)
    (ports_dir / "reserved.json").write_text("{not json")
    got = allocate_ports(2)
    assert set(reserved_now(ports_dir)) == {str(p) for p in got}


def test_release_ports_frees_them(ports_dir: Path) -> None:
    got = allocate_ports(3)
    release_ports(got[:2])
    assert set(reserved_now(ports_dir)) == {str(got[2])}
    release_ports([got[2], 1])  # unknown ports are ignored
    assert reserved_now(ports_dir) == {}


def test_released_ports_can_be_allocated_again(ports_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lo, hi = bindable_window(2)
    monkeypatch.setattr(ports, "PORT_RANGE", (lo, hi))
    got = allocate_ports(2)
    with pytest.raises(RuntimeError):
        allocate_ports(1)
    release_ports(got)
    assert sorted(allocate_ports(2)) == [lo, lo + 1]


def test_reservation_file_is_replaced_atomically(ports_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that dies mid-write (here: json.dump raising halfway) leaves the previous file whole and no
    temporary file behind; writing in place would leave half a file, read as "nothing reserved"."""
    first = allocate_ports(3)
    before = (ports_dir / "reserved.json").read_text()

    def half_then_die(obj: object, fh: Any) -> None:
        fh.write(json.dumps(obj)[:5])
        raise OSError("disk full")

    monkeypatch.setattr(ports.json, "dump", half_then_die)
    with pytest.raises(OSError, match="disk full"):
        allocate_ports(2)
    assert (ports_dir / "reserved.json").read_text() == before
    assert set(reserved_now(ports_dir)) == {str(p) for p in first}
    assert sorted(p.name for p in ports_dir.iterdir()) == ["lock", "reserved.json"]
