"""Background VRAM sampling: a node's memory over time, and one case's measured peak.

A :class:`BackgroundSampler` polls a :class:`~harness.gpu.devices.GpuSource` on a thread (10 Hz by default) and
keeps the time series per GPU. A :class:`CaseVramMonitor` rides on one and attributes memory to one case: the
processes whose session is the case's launch script (the launcher starts each stack in its own session, and
``lib.sh`` starts workers inside it), so cases packed on one GPU are measured apart. Where processes cannot be
attributed (NVML in a container sees host PIDs), it falls back to the device's growth over its first sample
and says so. The peak is what ``profiled_vram_gib`` should be judged against; ``drift_of`` flags the two ways a
profile goes stale (Dynamo's CI: a mark of 18.7 GiB measured at 7.6 GiB, ai-dynamo/dynamo PR #12842).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.gpu.devices import GIB, GpuSnapshot, GpuSource, GpuUnavailable, open_source, visible_devices

DEFAULT_INTERVAL_S = 0.1  # 10 Hz: the start-up profiling peak of an engine lasts well over a tenth of a second
FAR_BELOW = 0.5  # a profile more than twice the measured peak wastes packing capacity


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the sampler started
    gpus: tuple[GpuSnapshot, ...]


@dataclass
class Timeline:
    """Used memory per GPU over time (GiB), as the run report plots it."""

    t: list[float] = field(default_factory=list)
    used_gib: dict[int, list[float]] = field(default_factory=dict)
    total_gib: dict[int, float] = field(default_factory=dict)

    def add(self, sample: Sample) -> None:
        self.t.append(round(sample.t, 3))
        for g in sample.gpus:
            self.used_gib.setdefault(g.index, []).append(round(g.used_bytes / GIB, 3))
            self.total_gib[g.index] = round(g.total_bytes / GIB, 3)

    def peak_gib(self, index: int) -> float:
        return max(self.used_gib.get(index) or [0.0])

    def to_json(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "used_gib": {str(k): v for k, v in sorted(self.used_gib.items())},
            "total_gib": {str(k): v for k, v in sorted(self.total_gib.items())},
        }


class BackgroundSampler:
    """Polls ``source`` every ``interval_s`` on a daemon thread until stopped.

    ``latest`` is the newest snapshot (what the scheduler reads as measured free memory); ``timeline`` the series.
    A source that fails (NVML gone) stops the sampler and leaves the error in ``error``; nothing is raised into
    the thread that started it.
    """

    def __init__(
        self,
        source: GpuSource,
        interval_s: float = DEFAULT_INTERVAL_S,
        on_sample: Callable[[Sample], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.interval_s = interval_s
        self.on_sample = on_sample
        self.clock = clock
        self.timeline = Timeline()
        self.count = 0
        self.error: str | None = None
        self.latest: tuple[GpuSnapshot, ...] | None = None
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.t0 = clock()

    def sample_once(self) -> Sample | None:
        try:
            snap = tuple(self.source.snapshot())
        except (GpuUnavailable, OSError) as exc:
            self.error = str(exc)
            self._stop.set()
            return None
        sample = Sample(self.clock() - self.t0, snap)
        self.timeline.add(sample)
        if self.on_sample is not None:
            self.on_sample(sample)
        with self._cond:
            self.latest = snap
            self.count += 1
            self._cond.notify_all()
        return sample

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = self.clock()
            self.sample_once()
            self._stop.wait(max(0.0, self.interval_s - (self.clock() - started)))

    def start(self) -> BackgroundSampler:
        self.t0 = self.clock()
        self.sample_once()  # a first reading before anything starts: the baseline
        self._thread = threading.Thread(target=self._loop, name="vram-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        if self.error is None:
            self.sample_once()  # a last reading, so a short case still has two

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` samples were taken (or the deadline / an error); True when they were."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self.count < count and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.count >= count

    def __enter__(self) -> BackgroundSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def drift_of(peak_gib: float, profiled_gib: float | None, far_below: float = FAR_BELOW) -> str | None:
    """``over`` when a case measured more than its profile (it can OOM a neighbour it is packed with), ``under``
    when it sits far below (it wastes capacity: ai-dynamo/dynamo PR #12842 saved ~338 s by correcting one mark);
    None when the profile holds or there is none to judge."""
    if profiled_gib is None or profiled_gib <= 0:
        return None
    if peak_gib > profiled_gib:
        return f"over: measured peak {peak_gib:.2f} GiB > profiled_vram_gib {profiled_gib:g}"
    if peak_gib < profiled_gib * far_below:
        return f"under: measured peak {peak_gib:.2f} GiB < {far_below:g} x profiled_vram_gib {profiled_gib:g}"
    return None


@dataclass(frozen=True)
class CaseVram:
    """One case's measured VRAM: the peak on its busiest GPU (what ``profiled_vram_gib`` means) and per GPU."""

    peak_bytes: int
    per_gpu_peak_bytes: dict[int, int]
    samples: int
    hz: float
    attribution: str  # "process" (by the case's session) or "device" (growth of the visible GPUs)
    source: str
    profiled_vram_gib: float | None = None

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    @property
    def drift(self) -> str | None:
        return drift_of(self.peak_gib, self.profiled_vram_gib)

    def to_json(self) -> dict[str, Any]:
        return {
            "peak_gib": round(self.peak_gib, 3),
            "per_gpu_peak_gib": {str(k): round(v / GIB, 3) for k, v in sorted(self.per_gpu_peak_bytes.items())},
            "samples": self.samples,
            "hz": round(self.hz, 1),
            "attribution": self.attribution,
            "source": self.source,
            "profiled_vram_gib": self.profiled_vram_gib,
            "drift": self.drift,
        }


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError, OSError):
        return None


class CaseVramMonitor:
    """Measures one case: start it before the stack boots (the start-up peak counts), ``attach`` the stack's
    session id once known, read ``result()`` after teardown. Sessions are looked up while processes live, so
    samples taken before ``attach`` are attributed retroactively."""

    def __init__(
        self,
        source: GpuSource,
        visible: list[int] | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        profiled_vram_gib: float | None = None,
        sid_of: Callable[[int], int | None] = _sid,
    ) -> None:
        self.visible = visible
        self.profiled_vram_gib = profiled_vram_gib
        self.sid_of = sid_of
        self.session: int | None = None
        self._sids: dict[int, int | None] = {}
        self._rows: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []  # (gpu, device used, (pid, used)...)
        self._baseline: dict[int, int] = {}
        self._peaks: dict[tuple[int, int], int] = {}  # (gpu, pid) -> the process's own reported peak
        self.sampler = BackgroundSampler(source, interval_s, on_sample=self._record)

    def _record(self, sample: Sample) -> None:
        for g in sample.gpus:
            if self.visible is not None and g.index not in self.visible:
                continue
            self._baseline.setdefault(g.index, g.used_bytes)
            for p in g.processes:
                if p.pid not in self._sids:
                    self._sids[p.pid] = self.sid_of(p.pid)
                if p.peak_bytes is not None:
                    key = (g.index, p.pid)
                    self._peaks[key] = max(self._peaks.get(key, 0), p.peak_bytes)
            self._rows.append((g.index, g.used_bytes, tuple((p.pid, p.used_bytes) for p in g.processes)))

    def attach(self, session_id: int) -> None:
        self.session = session_id

    def start(self) -> CaseVramMonitor:
        self.sampler.start()
        return self

    def stop(self) -> None:
        self.sampler.stop()

    def _mine(self, pid: int) -> bool:
        return self.session is not None and self._sids.get(pid) == self.session

    def result(self) -> CaseVram:
        per_gpu: dict[int, int] = {}
        attributed = False
        for gpu, _, procs in self._rows:
            mine = [used for pid, used in procs if self._mine(pid)]
            if mine:
                attributed = True
            per_gpu[gpu] = max(per_gpu.get(gpu, 0), sum(mine))
        reported: dict[int, int] = {}  # a process's own peak between two samples still counts
        for (gpu, pid), peak in self._peaks.items():
            if self._mine(pid):
                reported[gpu] = reported.get(gpu, 0) + peak
        for gpu, peak in reported.items():
            attributed = True
            per_gpu[gpu] = max(per_gpu.get(gpu, 0), peak)
        if not attributed:
            per_gpu = {}
            for gpu, used, _ in self._rows:
                per_gpu[gpu] = max(per_gpu.get(gpu, 0), used - self._baseline.get(gpu, 0))
        s = self.sampler
        span = max(1e-9, s.clock() - s.t0)
        return CaseVram(
            peak_bytes=max(per_gpu.values(), default=0),
            per_gpu_peak_bytes=per_gpu,
            samples=s.count,
            hz=s.count / span,
            attribution="process" if attributed else "device",
            source=getattr(s.source, "name", type(s.source).__name__),
            profiled_vram_gib=self.profiled_vram_gib,
        )


@contextlib.contextmanager
def watch_case_vram(
    backend: str, profiled_vram_gib: float | None, record: dict[str, Any], interval_s: float = DEFAULT_INTERVAL_S
) -> Iterator[CaseVramMonitor | None]:
    """Sample while the block runs; on exit put the case's measured VRAM (or why there is none) in
    ``record["vram"]``. Yields None when no GPU can be read, so a gate never fails for want of a sampler."""
    try:
        source = open_source(backend)
    except GpuUnavailable as exc:
        record["vram"] = {"error": str(exc)}
        yield None
        return
    monitor = CaseVramMonitor(
        source, visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES")), interval_s, profiled_vram_gib
    ).start()
    try:
        yield monitor
    finally:
        monitor.stop()
        close_source(source)
        record["vram"] = monitor.result().to_json()


def close_source(source: GpuSource) -> None:
    """Shut a source down if it holds anything (NVML does; simulated GPUs do not)."""
    close = getattr(source, "close", None)
    if callable(close):
        close()
