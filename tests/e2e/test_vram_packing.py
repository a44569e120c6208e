"""Packing does not change verdicts: the same cases, run one after another and packed onto 2 simulated GPUs
(two of them sharing a card at the same time), give the same outcome and the same per-check verdicts.

This is the property Dynamo lost when multimodal router tests shared a GPU (ai-dynamo/dynamo PR #8916): here every
case boots its own stack and the gate's checks are per stack, so sharing a card cannot move a verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness import cli

pytestmark = pytest.mark.e2e

# Three pre_merge cases: a single worker, two workers behind the kv_mm proxy, and a control the gate must reject.
SELECT = ["-m", "pre_merge", "-k", "qwen3 and not b64 and not round_robin"]
CASES = {"mm_agg_qwen3-vl-2b", "mm_agg_router_qwen3-vl-2b", "mm_agg_router_kv_text_qwen3-vl-2b"}


def run_dir(root: Path) -> Path:
    return (root / "latest").resolve()


def verdicts(run: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    out = {}
    for path in (run / "cases").glob("*.json"):
        r = json.loads(path.read_text())
        checks = [(c["name"], c["verdict"]) for c in (r.get("gate") or {}).get("checks", [])]
        out[r["case"]] = (r["outcome"], checks)
    return out


def overlapping_on_one_gpu(placements: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    pairs = []
    for i, a in enumerate(placements):
        for b in placements[i + 1 :]:
            shared = set(a["gpus"]) & set(b["gpus"])
            if shared and a["start_s"] < b["end_s"] and b["start_s"] < a["end_s"]:
                pairs.append((a["case"], b["case"], min(shared)))
    return pairs


def test_packed_on_two_simulated_gpus_gives_the_sequential_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HARNESS_SIM_GPUS", raising=False)
    monkeypatch.setenv("HARNESS_SIM_GPU_DIR", str(tmp_path / "simgpu-seq"))
    assert cli.main(["run", "--reports-dir", str(tmp_path / "seq"), *SELECT]) == 0
    monkeypatch.setenv("HARNESS_SIM_GPU_DIR", str(tmp_path / "simgpu-packed"))
    # --stagger 0 and a CPU budget of 3: all three start in the first scheduling step, so two share a GPU.
    packed_argv = ["run", "--reports-dir", str(tmp_path / "packed"), "--gpus", "2x80", "--cpus", "3", "--stagger", "0"]
    assert cli.main([*packed_argv, *SELECT]) == 0

    seq, packed = run_dir(tmp_path / "seq"), run_dir(tmp_path / "packed")
    assert set(verdicts(seq)) == CASES
    assert verdicts(packed) == verdicts(seq)
    assert verdicts(seq)["mm_agg_router_kv_text_qwen3-vl-2b"][0] == "xfailed"  # the control is still rejected

    packing = json.loads((packed / "packing.json").read_text())
    placements = packing["placements"]
    assert {p["case"] for p in placements} == CASES and all(p["rc"] == 0 for p in placements)
    assert {g for p in placements for g in p["gpus"]} == {0, 1}
    assert overlapping_on_one_gpu(placements), placements  # the sharing the verdicts were compared under

    # Each case's measured peak is its own (attributed by session), on the GPU it was placed on.
    where = {p["case"]: p["gpus"] for p in placements}
    for path in (packed / "cases").glob("*.json"):
        r = json.loads(path.read_text())
        vram = r["vram"]
        assert vram["attribution"] == "process" and vram["peak_gib"] > 0, vram
        assert [int(k) for k, v in vram["per_gpu_peak_gib"].items() if v > 0] == where[r["case"]]
    # The node's memory over time covers both GPUs, and the report shows it.
    assert set(packing["timeline"]["used_gib"]) == {"0", "1"}
    assert all(max(v) > 0 for v in packing["timeline"]["used_gib"].values())
    summary = (packed / "summary.md").read_text()
    assert "GPU packing" in summary and (packed / "gpu_memory.svg").is_file()
