"""The oracle's rules and reference numbers, computed by hand."""

from __future__ import annotations

from harness.gate.oracle import (
    Layout,
    Reference,
    RefImage,
    anchor_problems,
    cache_hit_cap,
    declared_mm_options,
    expected_hit,
    shared_prefix,
    text_chat,
    whole_blocks,
)
from harness.gate.payloads import image_part, text_part
from harness.mm.families import FAMILIES
from harness.mm.geometry import resolve_geometry


def ref() -> Reference:
    return Reference(resolve_geometry("Qwen/Qwen3-VL-2B-Instruct", family="qwen3_vl"), 16)


def msgs(*images: str, text: str = "Q") -> list[dict[str, object]]:
    return [{"role": "user", "content": [*(image_part(u) for u in images), text_part(text)]}]


def test_vllm_cache_rules() -> None:
    assert whole_blocks(303, 16) == 288
    assert cache_hit_cap(304, 16) == 288  # the last prompt token is recomputed: never 304
    assert cache_hit_cap(305, 16) == 304
    assert expected_hit(261, 304, 16) == 256
    assert expected_hit(10_000, 304, 16) == 288


def test_anchors_hold_for_the_shared_core() -> None:
    for name in ("qwen3_vl", "qwen2_5_vl", "qwen2_vl", "llava"):
        assert anchor_problems(FAMILIES[name]) == []


def test_declared_processor_settings_change_the_reference() -> None:
    opts = declared_mm_options(['--speedup 0 --mm-processor-kwargs {"max_pixels":200704}'], "qwen3_vl")
    geometry = opts.geometry("Qwen/Qwen3-VL-2B-Instruct")
    # 512x512 > 200704 pixels: beta = sqrt(262144 / 200704); side = floor(512 / beta / 32) * 32 = 448 -> 14 x 14.
    assert geometry.num_tokens(512, 512) == 196
    assert declared_mm_options([], "qwen3_vl").geometry("Qwen/Qwen3-VL-2B-Instruct").num_tokens(512, 512) == 256


def test_layout_and_template_prefix() -> None:
    r = ref()
    layout = r.layout(msgs("u1"), [RefImage("a", (512, 512))])
    # "<|im_start|>" "user"(2 chunks) "\n" then "<|vision_start|>": the run starts at 5.
    assert layout.images == [(5, 256)]
    assert r.template_prefix() == 4
    assert r.marker_tokens == 2
    r.shift = 3
    assert r.offsets(layout) == [(8, 256)]


def test_shared_prefix_keys_images_salt_and_adapter() -> None:
    r = ref()
    a = r.layout(msgs("u", "u"), [RefImage("A", (512, 512)), RefImage("B", (512, 512))])
    b = r.layout(msgs("u", "u"), [RefImage("A", (512, 512)), RefImage("C", (512, 512))])
    # Shared: 5 template tokens, A's 256 pads, <|vision_end|>, <|vision_start|> = 263; B vs C differ from 263.
    assert shared_prefix(a, b) == 263
    assert shared_prefix(a, a) == a.tokens
    salted = Layout(a.prompt, salt="s")
    assert shared_prefix(a, salted) == 0
    assert shared_prefix(a, Layout(a.prompt, adapter="lora")) == 0
    assert shared_prefix(r.layout(text_chat("Alpha"), []), r.layout(text_chat("Omega"), [])) == 4
