"""The embedded default: simulated workers and the reference proxy, runnable on any machine (no GPU).

Controls (``expect="fail"``) run the same gate against deliberately degraded routing: text-only prefix keys and
round robin. They are strict xfails: if one ever passes, the gate has lost its teeth and the run fails.
"""

from _models import (
    LLAVA_15_7B,
    LLAVA_NEXT_7B,
    PHI3_VISION,
    QWEN2_VL_2B,
    QWEN3_VL_2B,
    QWEN25_VL_3B,
    SIM_KV,
)

from harness.profiles import Case, Topology

AGG = Topology(
    "agg",
    "agg.sh",
    marks=("pre_merge",),
    workers=1,
    requested_kv_cache_bytes=SIM_KV,
    profiled_vram_gib=8.0,
    timeout_s=60,
)
AGG_ROUTER = Topology(
    "agg_router",
    "agg_router.sh",
    marks=("pre_merge",),
    workers=2,
    router="proxy",
    policy="kv_mm",
    requested_kv_cache_bytes=SIM_KV,
    profiled_vram_gib=16.0,
    timeout_s=60,
)
AGG_ROUTER_LORA = Topology(
    "agg_router_lora",
    "agg_router_lora.sh",
    marks=("post_merge",),
    workers=2,
    router="proxy",
    policy="kv_mm",
    requested_kv_cache_bytes=SIM_KV,
    profiled_vram_gib=16.0,
    timeout_s=60,
)
KV_TEXT = Topology(
    "agg_router_kv_text",
    "agg_router.sh",
    marks=("pre_merge",),
    workers=2,
    router="proxy",
    policy="kv_text",
    requested_kv_cache_bytes=SIM_KV,
    profiled_vram_gib=16.0,
    timeout_s=60,
    expect="fail",
)
ROUND_ROBIN = Topology(
    "agg_router_round_robin",
    "agg_router.sh",
    marks=("pre_merge",),
    workers=2,
    router="proxy",
    policy="round_robin",
    requested_kv_cache_bytes=SIM_KV,
    profiled_vram_gib=16.0,
    timeout_s=60,
    expect="fail",
)

CASES = [
    # pre_merge: the gate and its two controls on the default model, plus the topology matrix on a second family.
    Case(QWEN3_VL_2B, AGG),
    Case(QWEN3_VL_2B, AGG_ROUTER),
    Case(QWEN3_VL_2B, AGG_ROUTER, payload="base64", suffix="b64"),
    Case(QWEN3_VL_2B, KV_TEXT),
    Case(QWEN3_VL_2B, ROUND_ROBIN),
    Case(QWEN25_VL_3B, AGG_ROUTER),
    # post_merge: every family, payload and topology.
    Case(QWEN3_VL_2B, AGG_ROUTER, payload="multi_image", suffix="multi", overrides={"marks": ("post_merge",)}),
    Case(QWEN3_VL_2B, AGG_ROUTER, payload="multi_turn", suffix="turns", overrides={"marks": ("post_merge",)}),
    Case(QWEN3_VL_2B, AGG_ROUTER_LORA, payload="lora"),
    Case(QWEN3_VL_2B, AGG_ROUTER, suffix="4w", overrides={"workers": 4, "marks": ("post_merge",)}),
    Case(QWEN25_VL_3B, KV_TEXT, overrides={"marks": ("post_merge",)}),
    Case(QWEN2_VL_2B, AGG_ROUTER, overrides={"marks": ("post_merge",)}),
    Case(LLAVA_15_7B, AGG_ROUTER, overrides={"marks": ("post_merge",)}),
    Case(LLAVA_NEXT_7B, AGG_ROUTER, overrides={"marks": ("post_merge",)}),
    Case(PHI3_VISION, AGG_ROUTER, overrides={"marks": ("post_merge",)}),
    Case(LLAVA_15_7B, AGG, overrides={"marks": ("post_merge",)}),
]
