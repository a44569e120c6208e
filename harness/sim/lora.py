"""Runtime LoRA adapters of a simulated worker, with vLLM's load/unload semantics and messages."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ApiError


@dataclass(frozen=True)
class LoadedAdapter:
    name: str
    path: str
    rank: int
    base_model: str | None
    int_id: int


class LoraRegistry:
    """Adapters by name. Like vLLM's serving layer, a registered adapter stays registered until unloaded
    (GPU slots are an engine-internal LRU); only a restart forgets it, which is what a router must handle."""

    def __init__(self, base_model: str, max_lora_rank: int) -> None:
        self.base_model = base_model
        self.max_lora_rank = max_lora_rank
        self.adapters: dict[str, LoadedAdapter] = {}
        self._next_id = 1

    def get(self, name: str) -> LoadedAdapter | None:
        return self.adapters.get(name)

    def load(self, name: str, path: str) -> LoadedAdapter:
        if not name or not path:
            raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.adapters:
            raise ApiError(400, f"The lora adapter '{name}' has already been loaded.", "lora_name")
        config_path = Path(path) / "adapter_config.json"
        if not config_path.is_file():
            raise ApiError(404, f"No adapter found for {path}", "lora_path")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as exc:
            raise ApiError(400, f"Invalid adapter_config.json in {path}: {exc}", "lora_path") from None
        rank = int(config.get("r", 0) or 0)
        if rank > self.max_lora_rank:
            raise ApiError(
                400,
                f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.",
                "lora_path",
            )
        adapter = LoadedAdapter(name, path, rank, config.get("base_model_name_or_path"), self._next_id)
        self._next_id += 1
        self.adapters[name] = adapter
        return adapter

    def unload(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
