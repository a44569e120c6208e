"""Resolve a model's image geometry from its ``preprocessor_config.json``.

The chain mirrors where a real deployment finds the file: an explicit file, the model as a local directory,
the local Hugging Face cache, the hub (skipped in offline mode), then the built-in defaults of a known
family. The first hit wins; if nothing is found the error names every place tried and the flags that
override the lookup, because "unknown model" with no hint costs a CI run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from harness.mm.families import FAMILIES, Family, family_for_model, get_family

log = logging.getLogger(__name__)

CONFIG_FILE = "preprocessor_config.json"
OVERRIDE_FLAGS = "--mm-family, --preprocessor-config, --mm-processor-kwargs"


class GeometryNotFoundError(LookupError):
    pass


@dataclass(frozen=True, eq=False)
class ImageGeometry:
    """A family plus the numbers its processor uses; counts placeholder tokens for an image size."""

    model: str
    family: Family
    config: Mapping[str, Any]
    source: str

    def num_tokens(self, width: int, height: int) -> int:
        return self.family.count_tokens(width, height, self.config)


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in {"1", "true", "yes", "on"} or bool(constants.HF_HUB_OFFLINE)


def _family_from_config(raw: Mapping[str, Any]) -> Family | None:
    kind = str(raw.get("image_processor_type") or raw.get("processor_class") or "")
    if kind.startswith("Qwen3VL"):
        return FAMILIES["qwen3_vl"]
    if kind.startswith("Qwen2_5_VL"):
        return FAMILIES["qwen2_5_vl"]
    if kind.startswith("Qwen2VL"):
        return FAMILIES["qwen3_vl"] if int(raw.get("patch_size", 14)) == 16 else FAMILIES["qwen2_vl"]
    if kind.startswith("LlavaNext"):
        return FAMILIES["llava_next"]
    if kind.startswith("Phi3V"):
        return FAMILIES["phi3_v"]
    if kind.startswith("CLIP"):
        return FAMILIES["llava"]
    return None


def _side(value: Any) -> int:
    if isinstance(value, Mapping):
        return int(value.get("height") or value.get("shortest_edge"))
    return int(value)


def config_from_file(family: Family, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The family's numbers read from a preprocessor config, defaults for what the file omits."""
    cfg: dict[str, Any] = dict(family.defaults)
    if family.name.startswith("qwen"):
        size = raw.get("size") or {}
        for key, size_key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            value = raw.get(key, size.get(size_key) if isinstance(size, Mapping) else None)
            if value is not None:
                cfg[key] = int(value)
        for key in ("patch_size", "merge_size"):
            if key in raw:
                cfg[key] = int(raw[key])
    elif family.name in ("llava", "llava_next"):
        if "crop_size" in raw:
            cfg["image_size"] = _side(raw["crop_size"])
        if "image_grid_pinpoints" in raw and family.name == "llava_next":
            cfg["image_grid_pinpoints"] = tuple(tuple(p) for p in raw["image_grid_pinpoints"])
    elif family.name == "phi3_v" and "num_crops" in raw:
        cfg["num_crops"] = int(raw["num_crops"])
    return cfg


def _read_json(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _find_config_file(model: str, cache_dir: str | None, tried: list[str]) -> tuple[str, str] | None:
    local = Path(model) / CONFIG_FILE
    tried.append(f"local directory {local}")
    if local.is_file():
        return str(local), f"local:{local}"

    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    tried.append(f"Hugging Face cache ({cache_dir or 'default HF_HUB_CACHE'})")
    try:
        cached = try_to_load_from_cache(repo_id=model, filename=CONFIG_FILE, cache_dir=cache_dir)
    except Exception as exc:  # an id that is not a valid repo name (e.g. a missing path)
        log.debug("cache lookup for %s failed: %s", model, exc)
        cached = None
    if isinstance(cached, str):
        return cached, f"hf-cache:{cached}"

    if _offline():
        tried.append("Hugging Face hub (skipped: HF_HUB_OFFLINE is set)")
        return None
    tried.append("Hugging Face hub")
    try:
        path = hf_hub_download(repo_id=model, filename=CONFIG_FILE, cache_dir=cache_dir, etag_timeout=5)
    except Exception as exc:
        tried[-1] += f" (failed: {type(exc).__name__})"
        return None
    return path, f"hub:{path}"


def resolve_geometry(
    model: str,
    *,
    family: str | None = None,
    preprocessor_config: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    cache_dir: str | None = None,
) -> ImageGeometry:
    """Geometry for ``model``; memoized on the arguments (and the offline flag)."""
    # Canonical JSON as the memo key: override values may be lists or dicts (--mm-processor-kwargs is JSON).
    frozen = json.dumps(dict(overrides or {}), sort_keys=True)
    return _resolve(model, family, preprocessor_config, frozen, cache_dir, _offline())


@lru_cache(maxsize=64)
def _resolve(
    model: str,
    family_name: str | None,
    preprocessor_config: str | None,
    overrides: str,
    cache_dir: str | None,
    offline: bool,
) -> ImageGeometry:
    del offline  # part of the memo key only: flipping HF_HUB_OFFLINE must not reuse a stale answer
    tried: list[str] = []
    family = get_family(family_name) if family_name else None
    found: tuple[str, str] | None
    if preprocessor_config:
        tried.append(f"--preprocessor-config {preprocessor_config}")
        if not Path(preprocessor_config).is_file():
            raise GeometryNotFoundError(f"preprocessor config file {preprocessor_config} does not exist")
        found = (preprocessor_config, f"file:{preprocessor_config}")
    else:
        found = _find_config_file(model, cache_dir, tried)

    family = family or family_for_model(model)
    if found is not None:
        raw = _read_json(found[0])
        family = family or _family_from_config(raw)
        if family is None:
            raise GeometryNotFoundError(
                f"model {model!r}: {found[0]} does not say which image processor it is for "
                f"(image_processor_type={raw.get('image_processor_type')!r}); pass --mm-family "
                f"({', '.join(FAMILIES)})"
            )
        cfg, source = config_from_file(family, raw), found[1]
    elif family is not None:
        tried.append(f"built-in defaults of family {family.name}")
        cfg, source = dict(family.defaults), f"builtin:{family.name}"
    else:
        raise GeometryNotFoundError(
            f"no image geometry for model {model!r}: tried {'; '.join(tried)}; the model id matches no "
            f"known family. Override with {OVERRIDE_FLAGS}."
        )
    cfg.update(json.loads(overrides))
    return ImageGeometry(model=model, family=family, config=MappingProxyType(cfg), source=source)


def clear_cache() -> None:
    _resolve.cache_clear()
