"""Model profiles and sizes shared by the profile files (files starting with _ hold no cases)."""

from harness.profiles import ModelProfile, Topology

GIB = 1024**3

QWEN3_VL_2B = ModelProfile("Qwen/Qwen3-VL-2B-Instruct", "qwen3-vl-2b", family="qwen3_vl")
QWEN25_VL_3B = ModelProfile("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl-3b", family="qwen2_5_vl")
QWEN2_VL_2B = ModelProfile("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-2b", family="qwen2_vl")
LLAVA_15_7B = ModelProfile("llava-hf/llava-1.5-7b-hf", "llava-1.5-7b", family="llava", max_model_len=4096)
LLAVA_NEXT_7B = ModelProfile("llava-hf/llava-v1.6-mistral-7b-hf", "llava-next-7b", family="llava_next")
PHI3_VISION = ModelProfile("microsoft/Phi-3-vision-128k-instruct", "phi3-vision", family="phi3_v")

# Simulated memory only; sized so every model's max_model_len fits its KV cache.
SIM_KV = 5 * GIB

#: The shape most simulated cases share: two workers behind the harness proxy with multimodal-aware routing.
#: Other topologies are this one with a few fields changed (``dataclasses.replace``).
SIM_AGG_ROUTER = Topology(
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
