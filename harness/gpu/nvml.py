"""Real GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``).

NVML numbers devices in PCI bus order; CUDA numbers them fastest-first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.
The packed runner sets that variable for every case, so the index a case is given in ``CUDA_VISIBLE_DEVICES``
is the index sampled here. Per-process usage comes from the compute and graphics process lists; a process
NVML reports without a figure (``usedGpuMemory`` None: containers without the PID namespace, some drivers) counts
as 0 there, and the device's own used figure still counts it, so free memory is never overstated.

The module is passed in (``module=``) so tests run every path through a fake ``pynvml`` on a machine without
a GPU; nothing here imports ``pynvml`` at module import time.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from types import ModuleType
from typing import Any

from harness.gpu.devices import GpuSnapshot, GpuUnavailable, ProcessUsage


class NvmlGpus:
    """A :class:`~harness.gpu.devices.GpuSource` over NVML. ``close()`` shuts NVML down again."""

    name = "nvml"

    def __init__(self, module: ModuleType | Any | None = None) -> None:
        if module is None:
            try:
                module = importlib.import_module("pynvml")
            except ImportError as exc:
                raise GpuUnavailable(f"nvidia-ml-py is not installed ({exc})") from None
        self.nvml = module
        self._lock = threading.Lock()
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            raise GpuUnavailable(f"NVML did not start: {exc}") from None
        self._open = True
        try:
            self.count = int(self.nvml.nvmlDeviceGetCount())
            self._handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        except self.nvml.NVMLError as exc:
            self.close()
            raise GpuUnavailable(f"NVML could not list devices: {exc}") from None
        if self.count == 0:
            self.close()
            raise GpuUnavailable("NVML sees no GPU")

    def _processes(self, handle: Any) -> tuple[ProcessUsage, ...]:
        seen: dict[int, int] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(self.nvml, getter, None)
            if fn is None:
                continue
            try:
                procs = fn(handle)
            except self.nvml.NVMLError:
                continue  # e.g. NOT_SUPPORTED for graphics on a compute-only part
            for p in procs:
                used = getattr(p, "usedGpuMemory", None)
                seen[int(p.pid)] = max(seen.get(int(p.pid), 0), int(used) if used else 0)
        return tuple(ProcessUsage(pid, used) for pid, used in sorted(seen.items()))

    def snapshot(self) -> list[GpuSnapshot]:
        with self._lock:
            if not self._open:
                raise GpuUnavailable("NVML was shut down")
            out = []
            for i, handle in enumerate(self._handles):
                try:
                    mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
                except self.nvml.NVMLError as exc:
                    raise GpuUnavailable(f"NVML could not read GPU {i}'s memory: {exc}") from None
                out.append(GpuSnapshot(i, int(mem.total), int(mem.used), self._processes(handle)))
            return out

    def close(self) -> None:
        with self._lock:
            if self._open:
                self._open = False
                with contextlib.suppress(self.nvml.NVMLError):
                    self.nvml.nvmlShutdown()
