"""The engine's timing model: how long one scheduler step takes on a simulated GPU.

A step costs a fixed overhead, plus prefill tokens actually computed (cache hits are free), plus image tokens
encoded (images whose placeholders are already cached, or whose encoder output the engine's encoder cache still
holds, need no encoder pass), plus one decode slot per running
sequence. Durations are divided by ``speedup``; ``speedup == 0`` disables delays entirely, which is how the
engine gets out of the way of load tests that measure the router.

Where the defaults come from. No published vLLM measurement of the profiled models (Qwen3-VL-2B, Qwen2.5-VL-3B)
on H100/H200 was found that gives per-token prefill or per-step decode figures (vLLM's blog and docs publish
end-to-end throughput of larger models, not these), so every default is an ESTIMATE from the hardware's public
peaks and the model's size, for a 2-4 B-parameter model in bf16 on one H100 SXM (H200: same compute, 4.8 TB/s):

=================  ========  ===============================================================================
default            value     estimate and why
=================  ========  ===============================================================================
step_overhead_s    3 ms      one decode step reads all weights once: ~7 GB / (3.35 TB/s HBM3 * ~0.7 achieved)
                             = ~3 ms for Qwen2.5-VL-3B (H100 SXM datasheet bandwidth); scheduler and sampling
                             overheads are inside the same figure. Smaller models (Qwen3-VL-2B, 4 GB) are ~2 ms.
prefill_token_s    40 us     2 * params FLOPs per token: 2 * 3.8e9 / (989 TFLOPS dense bf16 * ~0.2-0.4 MFU)
                             = 19-38 us; the upper end is taken, since short prefills of a few hundred tokens
                             run far below peak. Means ~25k prefill tokens/s per GPU.
image_token_s      80 us     per placeholder token the vision tower runs ``merge_size**2`` = 4 patches through a
                             ~0.6 B-parameter ViT (Qwen2.5-VL's is 0.67 B) with full attention over the image,
                             ~2x a text token's prefill; the ViT's lower utilisation doubles it again.
decode_seq_s       200 us    one more sequence in a decode batch adds its KV read (36 layers * 2 KV heads * 128 *
                             2 B * 2 = 36 KB/token for Qwen2.5-VL-3B; ~2k tokens of context = 74 MB = ~30 us)
                             plus attention and sampling overheads; 200 us is deliberately pessimistic.
=================  ========  ===============================================================================

Per model. The table's arithmetic is applied to each model's own size (``model_costs``: its weight bytes and its
KV bytes per token from ``harness.sim.model_specs``), so a 2 B model steps faster than a 7 B one; for
Qwen2.5-VL-3B it gives the values above. FP8 checkpoints count one byte per parameter and twice the bf16 peak.

These numbers set simulated latencies only; no gate threshold is derived from them (thresholds come from the
scenario, never from the system under test). Override per run with ``--step-overhead-ms``, ``--prefill-token-us``,
``--image-token-us``, ``--decode-seq-us``; for figures that must match a GPU, measure ``vllm bench serve`` on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.sim.model_specs import ModelSpec

#: H100 SXM datasheet peaks (H200 has the same compute; its 4.8 TB/s would only shorten memory-bound terms).
HBM_BYTES_PER_S = 3.35e12
BF16_FLOPS = 989e12
#: Achieved fractions assumed for short batches (see the table above).
ACHIEVED_BANDWIDTH = 0.7
PREFILL_MFU = 0.2
#: Per-sequence decode overheads besides its KV read (attention launch, sampling, detokenizing).
DECODE_SEQ_OVERHEAD_S = 170e-6
#: Context assumed for a decoding sequence's KV read.
DECODE_CONTEXT_TOKENS = 2048
#: Scheduler and sampling floor of a step, however small the model.
MIN_STEP_OVERHEAD_S = 1e-3


@dataclass(frozen=True)
class StepCosts:
    """The four per-step costs of a model, in seconds, before ``speedup``."""

    step_overhead_s: float
    prefill_token_s: float
    image_token_s: float
    decode_seq_s: float


def model_costs(spec: ModelSpec) -> StepCosts:
    """The default costs of ``spec``'s model on one H100, from its size (the derivation in the module doc)."""
    fp8 = "fp8" in spec.model.lower()
    params = spec.weights_bytes / (1 if fp8 else 2)
    flops = BF16_FLOPS * (2 if fp8 else 1)
    bandwidth = HBM_BYTES_PER_S * ACHIEVED_BANDWIDTH
    prefill = 2 * params / (flops * PREFILL_MFU)
    return StepCosts(
        step_overhead_s=max(MIN_STEP_OVERHEAD_S, spec.weights_bytes / bandwidth),
        prefill_token_s=prefill,
        image_token_s=2 * prefill,
        decode_seq_s=DECODE_SEQ_OVERHEAD_S + spec.kv_bytes_per_token * DECODE_CONTEXT_TOKENS / bandwidth,
    )


@dataclass(frozen=True)
class TimingModel:
    step_overhead_s: float = 0.003
    prefill_token_s: float = 0.00004
    image_token_s: float = 0.00008
    decode_seq_s: float = 0.0002
    speedup: float = 1.0

    @property
    def realtime(self) -> bool:
        return self.speedup > 0

    def step_seconds(self, prefill_tokens: int, image_tokens: int, decode_seqs: int) -> float:
        if not self.realtime:
            return 0.0
        cost = (
            self.step_overhead_s
            + prefill_tokens * self.prefill_token_s
            + image_tokens * self.image_token_s
            + decode_seqs * self.decode_seq_s
        )
        return cost / self.speedup
