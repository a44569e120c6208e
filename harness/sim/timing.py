"""The engine's timing model: how long one scheduler step takes on a simulated GPU.

A step costs a fixed overhead, plus prefill tokens actually computed (cache hits are free), plus image tokens
encoded (images whose placeholders are already cached need no encoder pass), plus one decode slot per running
sequence. Durations are divided by ``speedup``; ``speedup == 0`` disables delays entirely, which is how the
engine gets out of the way of load tests that measure the router.
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
