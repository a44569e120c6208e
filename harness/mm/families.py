"""Model families: how each renders image placeholders and counts their tokens.

A family is what the processor does with an image; the numbers it does it with (patch size, pixel bounds,
anyres pinpoints, crops) come from the model's ``preprocessor_config.json`` and are resolved in
``geometry.py``. The built-in defaults here are the hub configs' values, used only when no file is found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.mm import image_tokens

TokenCounter = Callable[[int, int, Mapping[str, Any]], int]


def _qwen(patch: int) -> TokenCounter:
    def count(width: int, height: int, cfg: Mapping[str, Any]) -> int:
        return image_tokens.qwen_vl_tokens(
            width,
            height,
            patch_size=int(cfg.get("patch_size", patch)),
            merge_size=int(cfg.get("merge_size", 2)),
            min_pixels=int(cfg["min_pixels"]),
            max_pixels=int(cfg["max_pixels"]),
        )

    return count


def _llava(width: int, height: int, cfg: Mapping[str, Any]) -> int:
    if width <= 0 or height <= 0:
        raise image_tokens.ImageGeometryError(f"image has an empty side ({width}x{height})")
    return (int(cfg["image_size"]) // int(cfg["patch_size"])) ** 2


def _llava_next(width: int, height: int, cfg: Mapping[str, Any]) -> int:
    return image_tokens.llava_next_tokens(
        width,
        height,
        image_size=int(cfg["image_size"]),
        patch_size=int(cfg["patch_size"]),
        grid_pinpoints=cfg["image_grid_pinpoints"],
    )


def _phi3v(width: int, height: int, cfg: Mapping[str, Any]) -> int:
    return image_tokens.phi3v_tokens(width, height, num_crops=int(cfg["num_crops"]))


@dataclass(frozen=True)
class Family:
    """How one model family turns an image part into placeholder tokens."""

    name: str
    #: The token repeated once per image feature; its run is the placeholder range the cache keys on.
    pad_token: str
    count_tokens: TokenCounter
    defaults: Mapping[str, Any]
    #: Text around the pad run (Qwen's vision start/end markers).
    prefix: str = ""
    suffix: str = ""
    #: System turn the template inserts when the conversation has none (Qwen2-VL and Qwen2.5-VL do).
    default_system: str | None = None
    model_patterns: tuple[str, ...] = field(default=())

    def matches(self, model_id: str) -> bool:
        # The last path component only: a local directory's parents say nothing about the model.
        lowered = model_id.rstrip("/").rsplit("/", 1)[-1].lower()
        return any(re.search(p, lowered) for p in self.model_patterns)


_QWEN_SYSTEM = "You are a helpful assistant."
_LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="qwen3_vl",
            pad_token="<|image_pad|>",
            prefix="<|vision_start|>",
            suffix="<|vision_end|>",
            count_tokens=_qwen(16),
            defaults={"patch_size": 16, "merge_size": 2, "min_pixels": 65536, "max_pixels": 16777216},
            model_patterns=(r"qwen3[-_.]?vl",),
        ),
        Family(
            name="qwen2_5_vl",
            pad_token="<|image_pad|>",
            prefix="<|vision_start|>",
            suffix="<|vision_end|>",
            count_tokens=_qwen(14),
            default_system=_QWEN_SYSTEM,
            defaults={"patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056},
            model_patterns=(r"qwen2\.5[-_]?vl", r"qwen2_5[-_]?vl"),
        ),
        Family(
            name="qwen2_vl",
            pad_token="<|image_pad|>",
            prefix="<|vision_start|>",
            suffix="<|vision_end|>",
            count_tokens=_qwen(14),
            default_system=_QWEN_SYSTEM,
            defaults={"patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056},
            model_patterns=(r"qwen2[-_]?vl",),
        ),
        Family(
            name="llava_next",
            pad_token="<image>",
            suffix="\n",
            count_tokens=_llava_next,
            defaults={"image_size": 336, "patch_size": 14, "image_grid_pinpoints": _LLAVA_NEXT_PINPOINTS},
            model_patterns=(r"llava[-_]?v1\.6", r"llava[-_]?next"),
        ),
        Family(
            name="llava",
            pad_token="<image>",
            suffix="\n",
            count_tokens=_llava,
            defaults={"image_size": 336, "patch_size": 14},
            model_patterns=(r"llava",),
        ),
        Family(
            name="phi3_v",
            pad_token="<|image|>",
            suffix="\n",
            count_tokens=_phi3v,
            defaults={"num_crops": 16},
            model_patterns=(r"phi-?3(\.5)?-vision",),
        ),
    )
}


def family_for_model(model_id: str) -> Family | None:
    """The family a model id names, by pattern, most specific first (dict order)."""
    for family in FAMILIES.values():
        if family.matches(model_id):
            return family
    return None


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
