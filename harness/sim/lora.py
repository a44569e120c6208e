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

    def load(self, name: str, path: str, *, load_inplace: bool = False) -> LoadedAdapter:
        """Register ``name``; with ``load_inplace`` an adapter of that name is replaced and keeps its id.

        ``LoadLoRAAdapterRequest.load_inplace`` (``vllm/entrypoints/serve/lora/protocol.py``): without it a second
        load of a name is refused. Blocks are keyed by the name, so after an in-place reload the old weights'
        cached blocks still hit, exactly as on vLLM.
        """
        if not name or not path:
            raise ApiError(400, "Both 'lora_name' and 'lora_path' must be provided.")
        previous = self.adapters.get(name)
        if previous is not None and not load_inplace:
            raise ApiError(
                400,
                f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in place, "
                "set 'load_inplace' to True.",
                "lora_name",
                "InvalidUserInput",
            )
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
        int_id = previous.int_id if previous is not None else self._next_id
        adapter = LoadedAdapter(name, path, rank, config.get("base_model_name_or_path"), int_id)
        if previous is None:
            self._next_id += 1
        self.adapters[name] = adapter
        return adapter

    def unload(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
