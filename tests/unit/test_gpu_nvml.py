"""NVML code paths through a fake ``pynvml`` module injected at the boundary (no GPU needed)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from harness.gpu.devices import GpuUnavailable, ProcessUsage, open_source
from harness.gpu.nvml import NvmlGpus

GIB = 1024**3


class NVMLError(Exception):
    pass


@dataclass
class Mem:
    total: int
    used: int
    free: int


@dataclass
class Proc:
    pid: int
    usedGpuMemory: int | None  # NVML's own field name


@dataclass
class FakeNvml:
    """The subset of pynvml the harness calls, with NVML's shapes: handles, memory info, process lists."""

    devices: list[dict[str, Any]] = field(default_factory=list)
    init_error: str | None = None
    calls: list[str] = field(default_factory=list)
    NVMLError: type[Exception] = NVMLError

    def nvmlInit(self) -> None:
        self.calls.append("init")
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> object:
        return ("handle", i)

    def nvmlDeviceGetMemoryInfo(self, handle: tuple[str, int]) -> Mem:
        d = self.devices[handle[1]]
        if d.get("broken"):
            raise NVMLError("GPU is lost")
        return Mem(d["total"], d["used"], d["total"] - d["used"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: tuple[str, int]) -> list[Proc]:
        return [Proc(pid, used) for pid, used in self.devices[handle[1]].get("compute", [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: tuple[str, int]) -> list[Proc]:
        raise NVMLError("Not Supported")


def two_gpus() -> FakeNvml:
    return FakeNvml(
        devices=[
            {"total": 80 * GIB, "used": 30 * GIB, "compute": [(111, 20 * GIB), (222, 9 * GIB)]},
            {"total": 80 * GIB, "used": 1 * GIB, "compute": [(333, None)]},
        ]
    )


def test_snapshot_reads_memory_and_processes() -> None:
    fake = two_gpus()
    gpus = NvmlGpus(fake)
    snap = gpus.snapshot()
    assert [(s.index, s.total_bytes, s.used_bytes, s.free_bytes) for s in snap] == [
        (0, 80 * GIB, 30 * GIB, 50 * GIB),
        (1, 80 * GIB, 1 * GIB, 79 * GIB),
    ]
    assert snap[0].processes == (ProcessUsage(111, 20 * GIB), ProcessUsage(222, 9 * GIB))
    # A process NVML lists without a figure counts 0 per process; the device's used figure still counts it.
    assert snap[1].processes == (ProcessUsage(333, 0),)
    gpus.close()
    gpus.close()
    assert fake.calls == ["init", "shutdown"]
    with pytest.raises(GpuUnavailable, match="shut down"):
        gpus.snapshot()


def test_init_failure_and_no_device_are_unavailable_not_crashes() -> None:
    with pytest.raises(GpuUnavailable, match="NVML did not start: Driver Not Loaded"):
        NvmlGpus(FakeNvml(init_error="Driver Not Loaded"))
    empty = FakeNvml()
    with pytest.raises(GpuUnavailable, match="no GPU"):
        NvmlGpus(empty)
    assert empty.calls == ["init", "shutdown"]


def test_a_lost_gpu_is_reported_as_unavailable() -> None:
    fake = two_gpus()
    fake.devices[1]["broken"] = True
    with pytest.raises(GpuUnavailable, match="GPU 1"):
        NvmlGpus(fake).snapshot()


def test_open_source_imports_pynvml_for_a_real_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = two_gpus()
    module = types.ModuleType("pynvml")
    for name in dir(fake):
        if name.startswith("nvml") or name == "NVMLError":
            setattr(module, name, getattr(fake, name))
    monkeypatch.setitem(sys.modules, "pynvml", module)
    source = open_source("vllm")
    assert source.name == "nvml"
    assert [s.used_bytes for s in source.snapshot()] == [30 * GIB, 1 * GIB]


def test_missing_package_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with pytest.raises(GpuUnavailable, match="nvidia-ml-py is not installed"):
        NvmlGpus()
