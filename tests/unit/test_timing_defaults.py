"""Per-model step costs: the timing docstring's arithmetic applied to each model's own size."""

from __future__ import annotations

import pytest

from harness.sim.config import parse_args
from harness.sim.model_specs import model_spec
from harness.sim.service import worker_timing
from harness.sim.timing import model_costs


def test_qwen25_vl_3b_gives_the_documented_table() -> None:
    """7.0 GiB of bf16 weights and 36 KiB of KV per token reproduce the table: ~3 ms, ~40 us, ~80 us, ~200 us."""
    c = model_costs(model_spec("Qwen/Qwen2.5-VL-3B-Instruct"))
    assert c.step_overhead_s == pytest.approx(7.0 * 1024**3 / (3.35e12 * 0.7))  # 3.2 ms
    assert c.prefill_token_s == pytest.approx(2 * 7.0 * 1024**3 / 2 / (989e12 * 0.2))  # 38 us
    assert c.image_token_s == pytest.approx(2 * c.prefill_token_s)
    assert c.decode_seq_s == pytest.approx(170e-6 + 36 * 2 * 128 * 2 * 2 * 2048 / (3.35e12 * 0.7))  # 202 us
    assert 2.5e-3 < c.step_overhead_s < 3.5e-3 and 30e-6 < c.prefill_token_s < 45e-6


def test_smaller_models_step_faster_and_fp8_halves_the_bytes() -> None:
    small = model_costs(model_spec("Qwen/Qwen3-VL-2B-Instruct"))
    big = model_costs(model_spec("Qwen/Qwen2.5-VL-7B-Instruct"))
    assert small.step_overhead_s < big.step_overhead_s
    assert small.prefill_token_s < big.prefill_token_s
    fp8 = model_costs(model_spec("Qwen/Qwen3-VL-2B-Instruct-FP8"))
    assert fp8.prefill_token_s < small.prefill_token_s  # fewer bytes per parameter and twice the peak


def test_flags_override_each_default_alone() -> None:
    cfg = parse_args(["--model", "Qwen/Qwen3-VL-2B-Instruct", "--port", "1", "--prefill-token-us", "100"])
    t = worker_timing(cfg, model_spec(cfg.model))
    d = model_costs(model_spec(cfg.model))
    assert t.prefill_token_s == pytest.approx(100e-6)
    assert (t.step_overhead_s, t.image_token_s, t.decode_seq_s) == (d.step_overhead_s, d.image_token_s, d.decode_seq_s)
