"""One sampler interface over real and simulated GPUs: per-GPU total/used/free and per-process usage.

Real GPUs are read through NVML (``harness.gpu.nvml``); without one, simulated GPUs are read from the file-backed
registry the simulated engine publishes into (``harness.gpu.simulated``). Count and size of the simulated GPUs
come from ``--gpus 2x80`` or ``HARNESS_SIM_GPUS=2x80``. Everything above this module (sampler, profiler,
scheduler) sees only :class:`GpuSnapshot`, so the packing and profiling code is the same on CPU and on GPUs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from harness.gpu.simulated import SimGpuRegistry

GIB = 1024**3
ENV_SIM_GPUS = "HARNESS_SIM_GPUS"
_SPEC_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class GpuSpec:
    """``COUNTxGIB``: how many GPUs of how many GiB each (a node's shape, real or simulated)."""

    count: int
    gib: float

    def __str__(self) -> str:
        return f"{self.count}x{self.gib:g}"

    @property
    def capacities_gib(self) -> list[float]:
        return [self.gib] * self.count


def parse_gpu_spec(text: str, flag: str = "--gpus") -> GpuSpec:
    """Parse ``8x80``; the error names the flag, so a CLI can print it as is."""
    m = _SPEC_RE.match(text or "")
    if not m or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
        raise ValueError(f"{flag} must look like 8x80 (GPU count x GiB per GPU, both positive), got {text!r}")
    return GpuSpec(int(m.group(1)), float(m.group(2)))


@dataclass(frozen=True)
class ProcessUsage:
    pid: int
    used_bytes: int
    #: The process's own peak when the source knows it (the simulated engine does; NVML does not).
    peak_bytes: int | None = None


@dataclass(frozen=True)
class GpuSnapshot:
    index: int
    total_bytes: int
    used_bytes: int
    processes: tuple[ProcessUsage, ...] = ()

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


class GpuSource(Protocol):
    """Anything that can say what every GPU holds right now."""

    name: str

    def snapshot(self) -> list[GpuSnapshot]: ...


class SimulatedGpus:
    """Simulated GPUs: capacity from the spec, usage from the simulated engine's registry."""

    name = "simulated"

    def __init__(self, spec: GpuSpec, registry: SimGpuRegistry | None = None) -> None:
        self.spec = spec
        self.registry = registry or SimGpuRegistry()

    def publish_capacities(self) -> None:
        """Write each GPU's capacity into the registry, so every reader of it agrees on the node's shape."""
        for i in range(self.spec.count):
            self.registry.set_capacity(i, int(self.spec.gib * GIB))

    def snapshot(self) -> list[GpuSnapshot]:
        out = []
        for i in range(self.spec.count):
            procs = tuple(ProcessUsage(p.pid, p.used_bytes, p.peak_bytes) for p in self.registry.processes(i))
            out.append(GpuSnapshot(i, int(self.spec.gib * GIB), sum(p.used_bytes for p in procs), procs))
        return out


def sim_spec_from_env(env: Mapping[str, str] | None = None, registry: SimGpuRegistry | None = None) -> GpuSpec:
    """The simulated node's shape: ``HARNESS_SIM_GPUS``, else what the registry and ``CUDA_VISIBLE_DEVICES``
    mention (at least one GPU), at the registry's capacity."""
    env = os.environ if env is None else env
    text = env.get(ENV_SIM_GPUS)
    if text:
        return parse_gpu_spec(text, ENV_SIM_GPUS)
    registry = registry or SimGpuRegistry()
    indices = set(registry.indices()) | set(visible_devices(env.get("CUDA_VISIBLE_DEVICES")) or [0])
    return GpuSpec(max(indices) + 1, registry.capacity(0) / GIB)


def visible_devices(value: str | None) -> list[int] | None:
    """``CUDA_VISIBLE_DEVICES`` as indices (None when unset: every device is visible). UUIDs are not mapped."""
    if value is None:
        return None
    return [int(v) for v in (p.strip() for p in value.split(",")) if v.isdigit()]


def open_source(backend: str, sim_gpus: GpuSpec | None = None) -> GpuSource:
    """NVML for a real backend, simulated GPUs for ``sim``. Raises ``GpuUnavailable`` when NVML cannot start."""
    if backend == "sim":
        return SimulatedGpus(sim_gpus or sim_spec_from_env())
    from harness.gpu.nvml import NvmlGpus

    return NvmlGpus()


class GpuUnavailable(RuntimeError):
    """No GPU can be read (no NVML library, no driver, no device)."""


def total_capacities_gib(snapshots: Sequence[GpuSnapshot]) -> list[float]:
    return [s.total_bytes / GIB for s in snapshots]
