"""Race-free loopback port allocation, shared by every process of a test run (pytest-xdist workers too).

Picking a port by binding port 0 and closing it races with the next caller doing the same. Here a caller takes
an exclusive ``flock`` on a run-wide lock file, chooses ports outside the kernel's ephemeral range that are
neither reserved by a live process nor bindable-failing, records them in a reservation file, and releases the
lock. Reservations die with the process that made them (checked by PID) or after a TTL.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness.stack.processes import pid_alive

PORT_RANGE = (20000, 32000)  # below Linux's default ephemeral range (32768-60999)
RESERVATION_TTL_S = 3600.0
ENV_DIR = "HARNESS_PORTS_DIR"


def _state_dir() -> Path:
    d = Path(os.environ.get(ENV_DIR) or Path(tempfile.gettempdir()) / f"mmharness-ports-{os.getuid()}")
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    d = _state_dir()
    with open(d / "lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield d / "reserved.json"
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(path: Path) -> dict[str, list[float]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    now = time.time()
    return {
        port: entry
        for port, entry in data.items()
        if isinstance(entry, list) and pid_alive(int(entry[0])) and now - entry[1] < RESERVATION_TTL_S
    }


def _store(path: Path, reserved: dict[str, list[float]]) -> None:
    """Replace the reservation file atomically: a reader (or a writer killed mid-write) never sees half a file,
    which ``_load`` would read as "nothing reserved" and hand live ports out again."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(reserved, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def allocate_ports(n: int, host: str = "127.0.0.1", owner_pid: int | None = None) -> list[int]:
    """``n`` distinct free ports, reserved for ``owner_pid`` (default: this process) until released."""
    owner = owner_pid or os.getpid()
    rng = random.Random()
    with _locked() as path:
        reserved = _load(path)
        chosen: list[int] = []
        for _ in range(2000):
            if len(chosen) == n:
                break
            port = rng.randrange(*PORT_RANGE)
            if str(port) in reserved or port in chosen or not port_is_free(port, host):
                continue
            chosen.append(port)
        if len(chosen) < n:
            raise RuntimeError(f"could not find {n} free ports in {PORT_RANGE}")
        now = time.time()
        for port in chosen:
            reserved[str(port)] = [owner, now]
        _store(path, reserved)
    return chosen


def release_ports(ports: list[int]) -> None:
    with _locked() as path:
        reserved = _load(path)
        for port in ports:
            reserved.pop(str(port), None)
        _store(path, reserved)
