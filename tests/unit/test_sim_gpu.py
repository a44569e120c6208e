"""SimGpuRegistry: the file-backed stand-in for NVML's per-device process list."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.gpu.simulated import DEFAULT_CAPACITY_BYTES, ENV_DIR, ProcessMemory, SimGpuRegistry, default_root

GIB = 1024**3


def dead_pid() -> int:
    """A pid no process can have (above the kernel's pid_max): tests/unit starts no process to get a dead one."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1  # Linux's largest pid_max is 2**22


def test_publish_read_remove(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    me = os.getpid()
    reg.publish(0, me, used_bytes=2 * GIB, peak_bytes=3 * GIB, label="worker-a")
    assert reg.processes(0) == [ProcessMemory(pid=me, used_bytes=2 * GIB, peak_bytes=3 * GIB, label="worker-a")]
    assert reg.used_bytes(0) == 2 * GIB
    # Other devices are untouched.
    assert reg.processes(1) == []
    assert reg.used_bytes(1) == 0

    # Republishing replaces the entry; no temp files are left behind.
    reg.publish(0, me, used_bytes=GIB, peak_bytes=3 * GIB, label="worker-a")
    assert reg.used_bytes(0) == GIB
    assert sorted(p.name for p in (tmp_path / "gpu0").iterdir()) == [f"{me}.json"]

    reg.remove(0, me)
    assert reg.processes(0) == []
    assert reg.used_bytes(0) == 0
    reg.remove(0, me)  # idempotent
    reg.remove(5, me)  # unknown device: no error


def test_several_live_processes_sorted_and_summed(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    me, parent = os.getpid(), os.getppid()
    reg.publish(2, me, used_bytes=5, peak_bytes=5)
    reg.publish(2, parent, used_bytes=7, peak_bytes=9)
    procs = reg.processes(2)
    assert [p.pid for p in procs] == sorted([me, parent])
    assert reg.used_bytes(2) == 12


def test_peak_is_at_least_used(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    reg.publish(0, os.getpid(), used_bytes=10 * GIB, peak_bytes=4 * GIB)
    (entry,) = reg.processes(0)
    assert entry.used_bytes == 10 * GIB
    assert entry.peak_bytes == 10 * GIB
    reg.publish(0, os.getpid(), used_bytes=GIB, peak_bytes=10 * GIB)
    (entry,) = reg.processes(0)
    assert entry.peak_bytes == 10 * GIB
    assert entry.peak_bytes >= entry.used_bytes


def test_entries_of_dead_processes_are_swept(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    gone = dead_pid()
    me = os.getpid()
    reg.publish(0, gone, used_bytes=40 * GIB, peak_bytes=40 * GIB, label="killed")
    reg.publish(0, me, used_bytes=GIB, peak_bytes=GIB)
    assert (tmp_path / "gpu0" / f"{gone}.json").exists()

    assert [p.pid for p in reg.processes(0)] == [me]
    assert reg.used_bytes(0) == GIB
    assert not (tmp_path / "gpu0" / f"{gone}.json").exists()  # swept, not just skipped
    assert (tmp_path / "gpu0" / f"{me}.json").exists()


def test_corrupt_entries_are_skipped(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    d = tmp_path / "gpu0"
    d.mkdir()
    (d / "123.json").write_text("{not json")
    (d / "124.json").write_text(json.dumps({"pid": os.getpid(), "unexpected": 1}))
    reg.publish(0, os.getpid(), used_bytes=3, peak_bytes=3)
    assert [p.used_bytes for p in reg.processes(0)] == [3]


def test_capacity_default_and_override(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    assert reg.capacity(0) == DEFAULT_CAPACITY_BYTES == 80 * GIB
    reg.set_capacity(1, 24 * GIB)
    assert reg.capacity(1) == 24 * GIB
    assert reg.capacity(0) == DEFAULT_CAPACITY_BYTES
    # A second registry over the same root (another process) sees the override.
    assert SimGpuRegistry(tmp_path).capacity(1) == 24 * GIB
    reg.set_capacity(1, 48 * GIB)
    assert reg.capacity(1) == 48 * GIB
    (tmp_path / "gpu1" / "capacity").write_text("garbage")
    assert reg.capacity(1) == DEFAULT_CAPACITY_BYTES


def test_indices(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path / "not-yet")
    assert reg.indices() == []
    reg = SimGpuRegistry(tmp_path)
    assert reg.indices() == []
    reg.publish(10, os.getpid(), 1, 1)
    reg.publish(2, os.getpid(), 1, 1)
    reg.set_capacity(0, GIB)
    (tmp_path / "gpux").mkdir()
    (tmp_path / "other").mkdir()
    assert reg.indices() == [0, 2, 10]


def test_reading_a_missing_root_is_empty(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path / "missing")
    assert reg.processes(0) == []
    assert reg.used_bytes(0) == 0
    assert reg.capacity(0) == DEFAULT_CAPACITY_BYTES


def test_default_root_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "env-root"))
    assert default_root() == tmp_path / "env-root"
    reg = SimGpuRegistry()
    reg.publish(0, os.getpid(), 1, 1)
    assert (tmp_path / "env-root" / "gpu0" / f"{os.getpid()}.json").exists()
    monkeypatch.delenv(ENV_DIR)
    assert default_root() != tmp_path / "env-root"
