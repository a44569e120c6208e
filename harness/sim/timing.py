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

These numbers set simulated latencies only; no gate threshold is derived from them (thresholds come from the
scenario, never from the system under test). Override per run with ``--step-overhead-ms``, ``--prefill-token-us``,
``--image-token-us``, ``--decode-seq-us``; for figures that must match a GPU, measure ``vllm bench serve`` on it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
