"""Third-party routers (PyPI: vllm-router, sglang-router) with ``cache_aware`` in front of simulated workers.

Both key their prefix trees on the request's text parts only (REFERENCE.md), so the multimodal gate is expected
to reject them: these cases are controls (strict xfail). If a release starts keeping images apart, the case
XPASSes, the run fails, and this file should move the router to ``expect="pass"``.
"""

from _models import QWEN3_VL_2B, SIM_KV

from harness.profiles import Case, Topology

VLLM_ROUTER = Topology(
    "vllm_router_cache_aware",
    "agg_router.sh",
    marks=("post_merge", "routers"),
    workers=2,
    router="vllm-router",
    policy="cache_aware",
    requested_kv_cache_bytes=SIM_KV,
    profiled_vram_gib=16.0,
    timeout_s=90,
    expect="fail",
)
SGLANG_ROUTER = Topology(
    "sglang_router_cache_aware",
    "agg_router.sh",
    marks=("post_merge", "routers"),
    workers=2,
    router="sglang-router",
    policy="cache_aware",
    requested_kv_cache_bytes=SIM_KV,
    profiled_vram_gib=16.0,
    timeout_s=90,
    expect="fail",
)

CASES = [Case(QWEN3_VL_2B, VLLM_ROUTER), Case(QWEN3_VL_2B, SGLANG_ROUTER)]
