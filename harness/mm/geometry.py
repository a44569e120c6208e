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

from harness.mm.families import FAMILIES, Family, UnsupportedModelError, family_for_model, get_family

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

    def with_overrides(self, kwargs: Mapping[str, Any]) -> ImageGeometry:
        """This geometry with a request's ``mm_processor_kwargs`` applied (the same forms as the flag's)."""
        if not kwargs:
            return self
        return _with_overrides(self, json.dumps(dict(kwargs), sort_keys=True, default=str))


@lru_cache(maxsize=256)
def _with_overrides(geometry: ImageGeometry, frozen: str) -> ImageGeometry:
    cfg = {**geometry.config, **normalize_overrides(geometry.family, json.loads(frozen))}
    return ImageGeometry(geometry.model, geometry.family, MappingProxyType(cfg), geometry.source)


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
    if kind.startswith(("LlavaOnevision", "LlavaNextVideo")):
        raise UnsupportedModelError(f"image processor {kind} is not supported (no family reproduces it)")
    if kind.startswith("LlavaNext"):
        return FAMILIES["llava_next"]
    if kind.startswith("Phi3V"):
        return FAMILIES["phi3_v"]
    if kind.startswith("CLIP"):
        return FAMILIES["llava"]
    return None


def _side(value: Any) -> int:
    if isinstance(value, Mapping):
        return _as_int(value.get("height") or value.get("shortest_edge"), "crop_size")
    return int(value)


def _qwen_pixels(raw: Mapping[str, Any]) -> dict[str, int]:
    """min/max_pixels from a Qwen2-VL-style config or kwargs: the flat keys win over the transformers-5 ``size``
    form (``{"shortest_edge": min_pixels, "longest_edge": max_pixels}``, ``Qwen2VLImageProcessor``)."""
    out: dict[str, int] = {}
    size = raw.get("size")
    for key, size_key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        value = raw.get(key, size.get(size_key) if isinstance(size, Mapping) else None)
        if value is not None:
            out[key] = _as_int(value, key)
    return out


def _as_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{key} must be an integer, got {json.dumps(value, default=str)}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key} must be an integer, got {json.dumps(value)}") from None
    if not number.is_integer() or number <= 0:
        raise ValueError(f"{key} must be a positive integer, got {json.dumps(value)}")
    return int(number)


def normalize_overrides(family: Family, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``--mm-processor-kwargs`` or a request's ``mm_processor_kwargs`` as the family's config keys.

    Qwen's ``size`` form becomes min/max_pixels, numbers are checked; keys the family does not use are kept
    (they change nothing, as unknown processor kwargs change nothing in vLLM). Raises ``ValueError``."""
    out = {k: v for k, v in kwargs.items() if k != "size" or not family.name.startswith("qwen")}
    if family.name.startswith("qwen"):
        for key in ("min_pixels", "max_pixels", "patch_size", "merge_size"):
            out.pop(key, None)
        out.update(_qwen_pixels(kwargs))
        for key in ("patch_size", "merge_size"):
            if key in kwargs:
                out[key] = _as_int(kwargs[key], key)
        if out.get("min_pixels", 0) > out.get("max_pixels", float("inf")):
            raise ValueError(f"min_pixels ({out['min_pixels']}) is larger than max_pixels ({out['max_pixels']})")
    elif family.name == "phi3_v" and "num_crops" in kwargs:
        out["num_crops"] = _as_int(kwargs["num_crops"], "num_crops")
    return out


def config_from_file(family: Family, raw: Mapping[str, Any], model: str = "") -> dict[str, Any]:
    """The family's numbers read from a preprocessor config, the model's defaults for what the file omits."""
    cfg: dict[str, Any] = family.defaults_for(model)
    if family.name.startswith("qwen"):
        cfg.update(_qwen_pixels(raw))
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


def find_model_file(
    model: str, filename: str, cache_dir: str | None, tried: list[str], *, check_local: bool = True
) -> tuple[str, str] | None:
    """``filename`` of ``model``: the model as a local directory, the local HF cache, then the hub unless offline.
    Returns (path, source label) and appends each place looked at to ``tried``. The tokenizer lookup
    (``harness.mm.text``) uses the same chain."""
    if check_local:
        local = Path(model) / filename
        tried.append(f"local directory {local}")
        if local.is_file():
            return str(local), f"local:{local}"

    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    tried.append(f"Hugging Face cache ({cache_dir or 'default HF_HUB_CACHE'})")
    try:
        cached = try_to_load_from_cache(repo_id=model, filename=filename, cache_dir=cache_dir)
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
        path = hf_hub_download(repo_id=model, filename=filename, cache_dir=cache_dir, etag_timeout=5)
    except Exception as exc:
        tried[-1] += f" (failed: {type(exc).__name__})"
        return None
    return path, f"hub:{path}"


def _find_config_file(model: str, cache_dir: str | None, tried: list[str]) -> tuple[str, str] | None:
    return find_model_file(model, CONFIG_FILE, cache_dir, tried)


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
        cfg, source = config_from_file(family, raw, model), found[1]
    elif family is not None:
        tried.append(f"built-in defaults of family {family.name}")
        cfg, source = family.defaults_for(model), f"builtin:{family.name}"
    else:
        raise GeometryNotFoundError(
            f"no image geometry for model {model!r}: tried {'; '.join(tried)}; the model id matches no "
            f"known family. Override with {OVERRIDE_FLAGS}."
        )
    cfg.update(normalize_overrides(family, json.loads(overrides)))
    return ImageGeometry(model=model, family=family, config=MappingProxyType(cfg), source=source)


def clear_cache() -> None:
    _resolve.cache_clear()
