"""The embedded default: simulated workers and the reference proxy, runnable on any machine (no GPU).

Controls (``expect="fail"``) run the same gate against deliberately degraded routing: ``kv_text`` (a router that
hashes the expanded prompt with the image placeholders but not the images: it claims a different image's blocks
as overlap and piles new images onto one worker), round robin and random (no cache affinity at all). They are
strict xfails: if one ever passes, the gate has lost its teeth and the run fails.

``agg_router_kv_events`` feeds the proxy's index with the workers' KV events (``HARNESS_KV_EVENTS=1``), so the
gate's eviction step runs: the workers clear their caches and the router must stop claiming what they held.
"""

from dataclasses import replace

from _models import (
    LLAVA_15_7B,
    LLAVA_NEXT_7B,
    PHI3_VISION,
    QWEN2_VL_2B,
    QWEN3_VL_2B,
    QWEN25_VL_3B,
    SIM_AGG_ROUTER,
)

from harness.profiles import Case

AGG_ROUTER = SIM_AGG_ROUTER
AGG = replace(AGG_ROUTER, name="agg", script="agg.sh", workers=1, router="none", policy=None, profiled_vram_gib=8.0)
AGG_ROUTER_LORA = replace(AGG_ROUTER, name="agg_router_lora", script="agg_router_lora.sh", marks=("post_merge",))
KV_TEXT = replace(AGG_ROUTER, name="agg_router_kv_text", policy="kv_text", expect="fail")
ROUND_ROBIN = replace(AGG_ROUTER, name="agg_router_round_robin", policy="round_robin", expect="fail")
RANDOM = replace(AGG_ROUTER, name="agg_router_random", policy="random", expect="fail", marks=("post_merge",))
KV_EVENTS = replace(AGG_ROUTER, name="agg_router_kv_events", kv_events=True, marks=("post_merge",))
POST = {"marks": ("post_merge",)}
# Measured with `harness vram CASE` on the simulated engine: profiled_vram_gib = peak at the recommended KV cap
# x 1.1 (rounded up), requested_kv_cache_bytes = smallest passing cap x 2 (2.5 GiB for Qwen3-VL-2B, 1.25 GiB for
# Qwen2.5-VL-3B). The other cases keep the topology's 5 GiB cap until measured.
VRAM_AGG_2B = {"profiled_vram_gib": 7.8, "requested_kv_cache_bytes": 2684354560}
VRAM_ROUTER_2B = {"profiled_vram_gib": 15.6, "requested_kv_cache_bytes": 2684354560}
VRAM_ROUTER_4W = {"profiled_vram_gib": 31.1, "requested_kv_cache_bytes": 2684354560}
VRAM_ROUTER_3B = {"profiled_vram_gib": 19.5, "requested_kv_cache_bytes": 1342177280}

CASES = [
    # pre_merge: the gate and its two controls on the default model, plus the topology matrix on a second family.
    Case(QWEN3_VL_2B, AGG, overrides=VRAM_AGG_2B),
    Case(QWEN3_VL_2B, AGG_ROUTER, overrides=VRAM_ROUTER_2B),
    Case(QWEN3_VL_2B, AGG_ROUTER, payload="base64", suffix="b64", overrides=VRAM_ROUTER_2B),
    Case(QWEN3_VL_2B, KV_TEXT, overrides=VRAM_ROUTER_2B),
    Case(QWEN3_VL_2B, ROUND_ROBIN, overrides=VRAM_ROUTER_2B),
    Case(QWEN25_VL_3B, AGG_ROUTER, overrides=VRAM_ROUTER_3B),
    # post_merge: every family, payload and topology.
    Case(QWEN3_VL_2B, AGG_ROUTER, payload="multi_image", suffix="multi", overrides=POST),
    Case(QWEN3_VL_2B, AGG_ROUTER, payload="multi_turn", suffix="turns", overrides=POST),
    Case(QWEN3_VL_2B, AGG_ROUTER_LORA, payload="lora"),
    Case(QWEN3_VL_2B, AGG_ROUTER, suffix="4w", overrides={"workers": 4, **POST, **VRAM_ROUTER_4W}),
    Case(QWEN25_VL_3B, KV_TEXT, overrides=POST),
    Case(QWEN3_VL_2B, RANDOM),
    Case(QWEN3_VL_2B, KV_EVENTS),
    Case(QWEN2_VL_2B, AGG_ROUTER, overrides=POST),
    Case(LLAVA_15_7B, AGG_ROUTER, overrides=POST),
    Case(LLAVA_NEXT_7B, AGG_ROUTER, overrides=POST),
    Case(PHI3_VISION, AGG_ROUTER, overrides=POST),
    Case(LLAVA_15_7B, AGG, overrides=POST),
]
