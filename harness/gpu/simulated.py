"""Simulated GPUs: a small file-backed registry that simulated workers publish their memory into.

Each simulated GPU index is a directory; each process using it writes ``<pid>.json`` with its current and
peak bytes (atomically, by rename). A VRAM sampler reads the directory the way NVML lists a device's
processes, so the harness's profiling and packing code runs unchanged without a GPU. Entries of processes
that no longer exist are ignored and swept, so a killed worker cannot leave phantom memory behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.stack.processes import pid_alive

DEFAULT_CAPACITY_BYTES = 80 * 1024**3
ENV_DIR = "HARNESS_SIM_GPU_DIR"


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    used_bytes: int
    peak_bytes: int
    label: str = ""


def default_root() -> Path:
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"mmharness-simgpu-{os.getuid()}"


class SimGpuRegistry:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def _dir(self, index: int) -> Path:
        return self.root / f"gpu{index}"

    def publish(self, index: int, pid: int, used_bytes: int, peak_bytes: int, label: str = "") -> None:
        d = self._dir(index)
        d.mkdir(parents=True, exist_ok=True)
        entry = ProcessMemory(pid=pid, used_bytes=used_bytes, peak_bytes=max(peak_bytes, used_bytes), label=label)
        tmp = d / f".{pid}.json.tmp"
        tmp.write_text(json.dumps(asdict(entry)))
        os.replace(tmp, d / f"{pid}.json")

    def remove(self, index: int, pid: int) -> None:
        (self._dir(index) / f"{pid}.json").unlink(missing_ok=True)

    def set_capacity(self, index: int, capacity_bytes: int) -> None:
        d = self._dir(index)
        d.mkdir(parents=True, exist_ok=True)
        (d / "capacity").write_text(str(capacity_bytes))

    def capacity(self, index: int) -> int:
        try:
            return int((self._dir(index) / "capacity").read_text())
        except (OSError, ValueError):
            return DEFAULT_CAPACITY_BYTES

    def processes(self, index: int) -> list[ProcessMemory]:
        out: list[ProcessMemory] = []
        d = self._dir(index)
        if not d.is_dir():
            return out
        for path in d.glob("*.json"):
            try:
                entry = ProcessMemory(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if not pid_alive(entry.pid):
                path.unlink(missing_ok=True)
                continue
            out.append(entry)
        return sorted(out, key=lambda e: e.pid)

    def used_bytes(self, index: int) -> int:
        return sum(p.used_bytes for p in self.processes(index))

    def indices(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.name[3:]) for p in self.root.glob("gpu*") if p.name[3:].isdigit())
