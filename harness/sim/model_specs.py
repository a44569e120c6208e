"""What the simulated engine needs to know about a model: memory per token, weights, context length.

Numbers are the public configs' (layers, KV heads, head dim; bf16 unless the id says FP8). They drive the
KV-cache block count for a given ``--kv-cache-memory-bytes`` and the simulated GPU memory a worker reports,
so VRAM profiling and packing can be exercised without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True)
class ModelSpec:
    model: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    weights_bytes: int
    max_model_len: int
    kv_dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_dtype_bytes


def _gib(x: float) -> int:
    return int(x * GIB)


KNOWN_MODELS: dict[str, ModelSpec] = {
    s.model.lower(): s
    for s in (
        ModelSpec("Qwen/Qwen3-VL-2B-Instruct", 28, 8, 128, _gib(3.96), 262144),
        ModelSpec("Qwen/Qwen3-VL-2B-Instruct-FP8", 28, 8, 128, _gib(2.45), 262144),
        ModelSpec("Qwen/Qwen3-VL-4B-Instruct", 36, 8, 128, _gib(8.3), 262144),
        ModelSpec("Qwen/Qwen3-VL-8B-Instruct", 36, 8, 128, _gib(16.3), 262144),
        ModelSpec("Qwen/Qwen2.5-VL-3B-Instruct", 36, 2, 128, _gib(7.0), 128000),
        ModelSpec("Qwen/Qwen2.5-VL-7B-Instruct", 28, 4, 128, _gib(15.5), 128000),
        ModelSpec("Qwen/Qwen2-VL-2B-Instruct", 28, 2, 128, _gib(4.1), 32768),
        ModelSpec("Qwen/Qwen2-VL-7B-Instruct", 28, 4, 128, _gib(15.5), 32768),
        ModelSpec("llava-hf/llava-1.5-7b-hf", 32, 32, 128, _gib(13.2), 4096),
        ModelSpec("llava-hf/llava-v1.6-mistral-7b-hf", 32, 8, 128, _gib(14.1), 32768),
        ModelSpec("microsoft/Phi-3-vision-128k-instruct", 32, 32, 96, _gib(7.7), 131072),
    )
}

#: For ids the table does not know: a 2B-class model, so unknown ids still get a plausible footprint.
GENERIC = ModelSpec("generic", 28, 8, 128, _gib(4.0), 32768)


def model_spec(model: str) -> ModelSpec:
    spec = KNOWN_MODELS.get(model.lower())
    if spec is None:
        return ModelSpec(
            model,
            GENERIC.num_layers,
            GENERIC.num_kv_heads,
            GENERIC.head_dim,
            GENERIC.weights_bytes,
            GENERIC.max_model_len,
        )
    return spec
