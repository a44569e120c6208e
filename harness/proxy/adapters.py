"""Resolve and validate LoRA adapters before any worker sees them.

An adapter is a directory with ``adapter_config.json`` and ``adapter_model.safetensors``. Validation reads the
config and only the safetensors *header* (tensor names and shapes, no weights), and rejects what vLLM workers
cannot load with a typed error naming the adapter, the base and the reason: a different base model (the
adapter's own config is authoritative; a registry entry that disagrees with it only warns), a rank above the
workers' ``--max-lora-rank``, DoRA magnitude vectors, or weights on the vision tower. Identity is name plus a
digest of the files' content, so a changed adapter under the same name is a different adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from harness.errors import AdapterError

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}\Z")  # \Z: "$" would accept a trailing newline
_VISION_MARKERS = ("visual.", "vision_tower", "vision_model", "vision_encoder", "image_encoder", "mm_projector")
_TARGET_RE = re.compile(r"\.([A-Za-z0-9_]+)\.lora_[AB]")


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    path: Path
    digest: str
    base_model: str | None
    rank: int
    target_modules: tuple[str, ...]
    resolve_ms: float = 0.0
    validate_ms: float = 0.0

    @property
    def identity(self) -> str:
        return f"{self.name}@{self.digest[:12]}"

    @property
    def served_name(self) -> str:
        """The name workers load this adapter under: it carries the content digest, because vLLM keys cached
        blocks by ``lora_name`` only (``vllm/v1/core/kv_cache_utils.py``, ``_gen_lora_extra_hash_keys``), so an
        adapter replaced under the same user-facing name must reach the workers under a new name or it would
        hit the old adapter's blocks. vLLM puts no constraint on ``lora_name`` beyond a non-empty string
        (``vllm/entrypoints/openai/models/serving.py``); ``@`` and hex keep it clear of the ``,`` that
        ``vllm:lora_requests_info`` joins names with."""
        return self.identity


@dataclass
class AdapterCatalog:
    """Adapters under ``root`` (``root/<name>/``), plus registry entries that may point elsewhere."""

    root: Path | None
    base_model: str
    max_lora_rank: int = 64
    registry: dict[str, dict] = field(default_factory=dict)
    _cache: dict[str, tuple[tuple[float, int, float, int], AdapterInfo]] = field(default_factory=dict)

    def available(self) -> dict[str, Path]:
        """Adapters a request may name: registry entries and ``root/<name>/`` directories with a config."""
        found: dict[str, Path] = {}
        if self.root is not None and self.root.is_dir():
            for path in sorted(self.root.iterdir()):
                if _NAME_RE.match(path.name) and (path / CONFIG_FILE).is_file():
                    found[path.name] = path
        for name, entry in self.registry.items():
            if entry.get("path"):
                found[name] = Path(entry["path"])
        return found

    def _locate(self, name: str) -> Path:
        if not _NAME_RE.match(name):
            raise AdapterError(name, self.base_model, "not a valid adapter name", status=404)
        entry = self.registry.get(name)
        if entry and entry.get("path"):
            path = Path(entry["path"])
        elif self.root is not None:
            path = (self.root / name).resolve()
            if not path.is_relative_to(self.root.resolve()):
                raise AdapterError(name, self.base_model, "path escapes the adapter directory", status=404)
        else:
            raise AdapterError(name, self.base_model, "no adapter directory is configured", status=404)
        if not (path / CONFIG_FILE).is_file():
            raise AdapterError(name, self.base_model, f"no {CONFIG_FILE} in {path}", status=404)
        return path

    def resolve(self, name: str) -> AdapterInfo:
        """Locate and validate ``name``; memoized on the files' mtimes and sizes."""
        t0 = time.perf_counter()
        path = self._locate(name)
        config, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        try:
            cs, ws = config.stat(), weights.stat()
        except FileNotFoundError:
            raise AdapterError(name, self.base_model, f"{WEIGHTS_FILE} is missing in {path}", status=404) from None
        key = (cs.st_mtime, cs.st_size, ws.st_mtime, ws.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == key and cached[1].path == path:
            return cached[1]
        resolve_ms = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        info = self._validate(name, path, config, weights)
        info = AdapterInfo(
            **{**info.__dict__, "resolve_ms": resolve_ms, "validate_ms": (time.perf_counter() - t1) * 1e3}
        )
        self._cache[name] = (key, info)
        return info

    def _validate(self, name: str, path: Path, config: Path, weights: Path) -> AdapterInfo:
        base = self.base_model
        try:
            cfg = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            raise AdapterError(name, base, f"unreadable {CONFIG_FILE}: {exc}") from None
        if not isinstance(cfg, dict):
            raise AdapterError(name, base, f"{CONFIG_FILE} is not a JSON object")
        own_base = cfg.get("base_model_name_or_path")
        declared = (self.registry.get(name) or {}).get("base_model")
        if declared and own_base and declared != own_base:
            log.warning(
                "adapter %s: registry says base %r but its %s says %r; the file wins",
                name,
                declared,
                CONFIG_FILE,
                own_base,
            )
        own_base = own_base or declared  # a file that names no base defers to the registry entry
        if own_base and own_base != base:
            raise AdapterError(name, base, f"it was trained for base model {own_base!r}")
        if cfg.get("use_dora"):
            raise AdapterError(name, base, "DoRA adapters (use_dora) are not supported by vLLM")
        try:
            with safe_open(str(weights), framework="numpy") as f:
                keys = list(f.keys())
                shapes = {k: f.get_slice(k).get_shape() for k in keys if ".lora_A" in k}
        except Exception as exc:
            raise AdapterError(name, base, f"unreadable {WEIGHTS_FILE}: {exc}") from None
        if any("lora_magnitude_vector" in k for k in keys):
            raise AdapterError(name, base, "DoRA magnitude vectors found; vLLM does not load DoRA adapters")
        vision = [k for k in keys if any(m in k for m in _VISION_MARKERS)]
        if vision:
            raise AdapterError(
                name,
                base,
                f"it has weights on the vision tower ({vision[0]}); vLLM applies LoRA to the language model only",
            )
        ranks = {int(s[0]) for s in shapes.values() if s}
        rank = max(ranks) if ranks else int(cfg.get("r", 0) or 0)
        if rank > self.max_lora_rank:
            raise AdapterError(name, base, f"rank {rank} exceeds the workers' max_lora_rank {self.max_lora_rank}")
        if not keys:
            raise AdapterError(name, base, f"{WEIGHTS_FILE} holds no tensors")
        targets = tuple(sorted({m.group(1) for k in keys if (m := _TARGET_RE.search(k))}))
        digest = hashlib.sha256()
        for part in (config, weights):
            with open(part, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
        return AdapterInfo(
            name=name, path=path, digest=digest.hexdigest(), base_model=own_base, rank=rank, target_modules=targets
        )
