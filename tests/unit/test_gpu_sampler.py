"""The sampler interface over simulated GPUs, the background time series, per-case attribution and drift."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from harness.gpu.devices import (
    GpuSnapshot,
    GpuSpec,
    ProcessUsage,
    SimulatedGpus,
    open_source,
    parse_gpu_spec,
    sim_spec_from_env,
    visible_devices,
)
from harness.gpu.sampler import BackgroundSampler, CaseVramMonitor, drift_of, watch_case_vram
from harness.gpu.simulated import SimGpuRegistry

GIB = 1024**3


class Scripted:
    """A source that replays snapshots, then repeats the last one; counts its reads."""

    name = "scripted"

    def __init__(self, frames: list[list[GpuSnapshot]]) -> None:
        self.frames = frames
        self.reads = 0
        self.lock = threading.Lock()

    def snapshot(self) -> list[GpuSnapshot]:
        with self.lock:
            frame = self.frames[min(self.reads, len(self.frames) - 1)]
            self.reads += 1
            return frame


def snap(index: int, used_gib: float, *procs: tuple[int, float], total_gib: float = 80.0) -> GpuSnapshot:
    return GpuSnapshot(
        index, int(total_gib * GIB), int(used_gib * GIB), tuple(ProcessUsage(p, int(u * GIB)) for p, u in procs)
    )


@pytest.mark.parametrize("text", ["8x", "x80", "0x80", "8x0", "eight", "", "8*80"])
def test_gpu_spec_errors_name_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match=r"--gpus must look like 8x80"):
        parse_gpu_spec(text)


def test_gpu_spec() -> None:
    assert parse_gpu_spec("8x80") == GpuSpec(8, 80.0)
    assert parse_gpu_spec(" 2X40.5 ").capacities_gib == [40.5, 40.5]
    assert str(GpuSpec(2, 80.0)) == "2x80"


def test_visible_devices() -> None:
    assert visible_devices(None) is None
    assert visible_devices("") == []
    assert visible_devices("1, 3") == [1, 3]


def test_simulated_gpus_read_the_engine_registry(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    reg.publish(1, os.getpid(), used_bytes=12 * GIB, peak_bytes=14 * GIB, label="w")
    gpus = SimulatedGpus(GpuSpec(2, 40.0), reg)
    gpus.publish_capacities()
    s = gpus.snapshot()
    assert [(g.index, g.total_bytes, g.used_bytes) for g in s] == [(0, 40 * GIB, 0), (1, 40 * GIB, 12 * GIB)]
    assert s[1].free_bytes == 28 * GIB
    assert s[1].processes == (ProcessUsage(os.getpid(), 12 * GIB, 14 * GIB),)
    assert reg.capacity(1) == 40 * GIB


def test_sim_spec_from_env(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    assert sim_spec_from_env({"HARNESS_SIM_GPUS": "4x24"}, reg) == GpuSpec(4, 24.0)
    with pytest.raises(ValueError, match="HARNESS_SIM_GPUS must look like"):
        sim_spec_from_env({"HARNESS_SIM_GPUS": "4"}, reg)
    assert sim_spec_from_env({"CUDA_VISIBLE_DEVICES": "0,2"}, reg) == GpuSpec(3, 80.0)
    assert open_source("sim", GpuSpec(1, 8.0)).name == "simulated"


def test_background_sampler_records_a_series_and_the_peak() -> None:
    frames = [[snap(0, 1.0), snap(1, 0.0)], [snap(0, 9.0), snap(1, 3.0)], [snap(0, 2.0), snap(1, 3.0)]]
    source = Scripted(frames)
    sampler = BackgroundSampler(source, interval_s=0.001).start()
    assert sampler.wait_for(5, timeout_s=10.0)
    sampler.stop()
    tl = sampler.timeline
    assert len(tl.t) == sampler.count >= 5 and tl.t == sorted(tl.t)
    assert tl.used_gib[0][:3] == [1.0, 9.0, 2.0]
    assert tl.peak_gib(0) == 9.0 and tl.peak_gib(1) == 3.0
    assert sampler.latest is not None and sampler.latest[0].used_bytes == 2 * GIB
    assert tl.to_json()["total_gib"] == {"0": 80.0, "1": 80.0}


def test_a_failing_source_stops_the_sampler_with_its_error() -> None:
    from harness.gpu.devices import GpuUnavailable

    class Lost:
        name = "lost"

        def snapshot(self) -> list[GpuSnapshot]:
            raise GpuUnavailable("GPU is lost")

    sampler = BackgroundSampler(Lost(), interval_s=0.001).start()
    assert not sampler.wait_for(1, timeout_s=5.0)
    sampler.stop()
    assert sampler.error == "GPU is lost"


def test_case_monitor_attributes_only_its_own_session() -> None:
    sessions = {100: 50, 101: 50, 200: 60}  # 100, 101: this case's workers; 200: a neighbour on the same GPU
    frames = [
        [snap(0, 5.0, (200, 5.0))],
        [snap(0, 15.0, (200, 5.0), (100, 10.0))],
        [snap(0, 29.0, (200, 9.0), (100, 10.0), (101, 10.0))],
        [snap(0, 9.0, (200, 9.0))],
    ]
    mon = CaseVramMonitor(Scripted(frames), interval_s=3600, profiled_vram_gib=16.0, sid_of=sessions.get)
    for _ in frames:  # drive it by hand: a deterministic series
        mon.sampler.sample_once()
    mon.attach(50)
    r = mon.result()
    assert r.attribution == "process"
    assert r.peak_bytes == 20 * GIB and r.per_gpu_peak_bytes == {0: 20 * GIB}
    assert r.drift is not None and r.drift.startswith("over")
    assert r.to_json()["peak_gib"] == 20.0 and r.to_json()["drift"] == r.drift


def test_case_monitor_falls_back_to_device_growth_and_honours_visibility() -> None:
    frames = [[snap(0, 2.0), snap(1, 50.0)], [snap(0, 10.0, (999, 8.0)), snap(1, 70.0)]]
    mon = CaseVramMonitor(Scripted(frames), visible=[0], interval_s=3600, sid_of=lambda pid: None)
    for _ in frames:
        mon.sampler.sample_once()
    mon.attach(50)
    r = mon.result()
    assert r.attribution == "device" and r.per_gpu_peak_bytes == {0: 8 * GIB}  # gpu1 is not the case's


def test_reported_process_peaks_count_between_samples(tmp_path: Path) -> None:
    reg = SimGpuRegistry(tmp_path)
    reg.publish(0, os.getpid(), used_bytes=6 * GIB, peak_bytes=11 * GIB)  # a start-up peak already gone
    mon = CaseVramMonitor(SimulatedGpus(GpuSpec(1, 80.0), reg), interval_s=3600)
    mon.sampler.sample_once()
    mon.attach(os.getsid(0))
    assert mon.result().peak_bytes == 11 * GIB


def test_drift() -> None:
    assert drift_of(7.6, 18.7) is not None and drift_of(7.6, 18.7).startswith("under")  # type: ignore[union-attr]
    assert drift_of(10.0, 12.0) is None
    assert drift_of(12.5, 12.0).startswith("over")  # type: ignore[union-attr]
    assert drift_of(3.0, None) is None


def test_watch_case_vram_writes_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_SIM_GPU_DIR", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    reg = SimGpuRegistry(tmp_path)
    record: dict[str, object] = {}
    with watch_case_vram("sim", 4.0, record, interval_s=0.01) as mon:
        assert mon is not None
        reg.publish(1, os.getpid(), used_bytes=3 * GIB, peak_bytes=3 * GIB)
        reg.publish(0, os.getpid(), used_bytes=30 * GIB, peak_bytes=30 * GIB)  # not this case's GPU
        mon.attach(os.getsid(0))
        assert mon.sampler.wait_for(mon.sampler.count + 2, timeout_s=10.0)
    vram = record["vram"]
    assert isinstance(vram, dict)
    assert vram["peak_gib"] == 3.0 and vram["per_gpu_peak_gib"] == {"1": 3.0}
    assert vram["attribution"] == "process" and vram["source"] == "simulated" and vram["drift"] is None


def test_watch_case_vram_without_nvml_records_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)
    record: dict[str, object] = {}
    with watch_case_vram("vllm", 10.0, record) as mon:
        assert mon is None
    assert "nvidia-ml-py is not installed" in str(record["vram"])
