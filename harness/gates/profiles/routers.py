"""Third-party routers (PyPI: vllm-router, sglang-router) with ``cache_aware`` in front of simulated workers.

Neither keeps a multimodal routing key (vllm-router leaves image requests out of its prefix tree, sglang-router
keys on text parts only), so the gate is expected to reject both: these cases are controls (strict xfail). If a
release starts keeping images apart, its case XPASSes, the run fails, and this file should say ``expect="pass"``.
"""

from dataclasses import replace

from _models import QWEN3_VL_2B, SIM_AGG_ROUTER

from harness.profiles import Case

THIRD_PARTY = {"marks": ("post_merge", "routers"), "policy": "cache_aware", "timeout_s": 90, "expect": "fail"}
VLLM_ROUTER = replace(SIM_AGG_ROUTER, name="vllm_router_cache_aware", router="vllm-router", **THIRD_PARTY)
SGLANG_ROUTER = replace(SIM_AGG_ROUTER, name="sglang_router_cache_aware", router="sglang-router", **THIRD_PARTY)

CASES = [Case(QWEN3_VL_2B, VLLM_ROUTER), Case(QWEN3_VL_2B, SGLANG_ROUTER)]
