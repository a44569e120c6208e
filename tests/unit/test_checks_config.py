"""Calibration and metrics checks: both branches, numbers by hand."""

from __future__ import annotations

import pytest

from harness.gate.checks.config import (
    image_tokens_agree,
    reference_anchors,
    render_agrees,
    template_prefix_agrees,
    workers_block_size,
)
from harness.gate.checks.prom import block_size_from_metrics, metrics_agree, queries_agree
from harness.mm import image_tokens
from harness.mm.families import FAMILIES


def test_reference_anchors_pass_and_catch_a_shifted_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    assert reference_anchors(FAMILIES["qwen3_vl"]).passed is True
    assert reference_anchors(FAMILIES["qwen2_5_vl"]).passed is True
    assert reference_anchors(FAMILIES["llava"]).passed is True
    assert reference_anchors(FAMILIES["phi3_v"]).passed is None  # nothing pinned: n/a with its reason
    real = image_tokens.qwen_vl_tokens
    monkeypatch.setattr(image_tokens, "qwen_vl_tokens", lambda *a, **kw: real(*a, **kw) + 16)
    bad = reference_anchors(FAMILIES["qwen3_vl"])
    assert bad.passed is False and "1024x768: formula gives 784, published 768" in bad.actual


def test_image_tokens_agree_names_both_numbers() -> None:
    ok = image_tokens_agree("n", 256, 256, "prompt_tokens probe", "probe")
    assert ok.passed is True
    # Workers at max_pixels 200704 count 14 x 14 = 196 for 512x512; the reference (defaults) says 256.
    bad = image_tokens_agree("n", 256, 196, "prompt_tokens probe", "probe")
    assert bad.passed is False and "256" in bad.expected and "196" in bad.actual
    assert image_tokens_agree("n", 256, None, "render", "stack render").passed is None


def test_render_and_prefix() -> None:
    assert render_agrees([(5, 256)], [(5, 256)]).passed is True
    assert render_agrees([(5, 256)], [(5, 272)]).passed is False
    assert render_agrees([(5, 256)], None).passed is None
    assert template_prefix_agrees(4, 4).passed is True
    assert template_prefix_agrees(4, 22).passed is False
    assert template_prefix_agrees(4, None).passed is None


def test_workers_block_size() -> None:
    assert workers_block_size(16, {"worker0": (16, "m")}).passed is True
    assert workers_block_size(16, {"worker0": (32, "m")}).passed is False
    assert workers_block_size(16, {"worker0": (None, "none")}).passed is None


def test_block_size_from_cache_config_info() -> None:
    text = '# TYPE vllm:cache_config_info gauge\nvllm:cache_config_info{block_size="32",num_gpu_blocks="9"} 1.0\n'
    assert block_size_from_metrics(text) == 32
    assert block_size_from_metrics("# TYPE x counter\nx_total 1\n") is None


def samples(hits: float, queries: float) -> dict[str, dict[str, float]]:
    return {"worker0": {"vllm:prefix_cache_hits_total": hits, "vllm:prefix_cache_queries_total": queries}}


def test_metrics_agree_both_branches() -> None:
    before, after = samples(100, 1000), samples(388, 1304)  # +288 hits, +304 queries
    check, delta = metrics_agree(before, after, 288)
    assert check.passed is True and delta.hit_rate == pytest.approx(288 / 304)
    assert metrics_agree(before, after, 304)[0].passed is False  # responses claim more than the counters saw
    assert metrics_agree(before, before, 0)[0].passed is None
    assert queries_agree(before, after, 304).passed is True
    assert queries_agree(before, after, 320).passed is False
