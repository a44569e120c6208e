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
    #: Per-model changes to ``defaults`` (pattern on the model id's last component -> values): models of one
    #: family whose hub configs differ, e.g. Phi-3.5-vision's ``num_crops`` 4 against Phi-3-vision's 16.
    model_defaults: tuple[tuple[str, Mapping[str, Any]], ...] = field(default=())

    def matches(self, model_id: str) -> bool:
        lowered = _model_name(model_id)
        return any(re.search(p, lowered) for p in self.model_patterns)

    def defaults_for(self, model_id: str) -> dict[str, Any]:
        """The built-in numbers for ``model_id``: the family's, with the first matching per-model change."""
        cfg = dict(self.defaults)
        lowered = _model_name(model_id)
        for pattern, values in self.model_defaults:
            if re.search(pattern, lowered):
                cfg.update(values)
                break
        return cfg


def _model_name(model_id: str) -> str:
    # The last path component only: a local directory's parents say nothing about the model.
    return model_id.rstrip("/").rsplit("/", 1)[-1].lower()


class UnsupportedModelError(ValueError):
    """A model whose processor none of the families reproduces; matching it to a look-alike family would
    route on wrong placeholder counts, so it is refused by name."""


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
            # Phi-3-vision's preprocessor_config.json says num_crops 16, Phi-3.5-vision's 4 (vLLM's
            # tests/models/multimodal/processing/test_phi3v.py: "the default num_crops of phi-3.5-vision is 4",
            # 757 tokens per image against 1921 with num_crops 16).
            defaults={"num_crops": 16},
            model_defaults=((r"phi-?3\.5-vision", {"num_crops": 4}),),
            model_patterns=(r"phi-?3(\.5)?-vision",),
        ),
    )
}

#: Model ids that look like a known family but whose processors are not any family's: vLLM serves LLaVA-OneVision
#: with its own processor (``vllm/model_executor/models/llava_onevision.py``: anyres-max tiling, video) and
#: LLaVA-NeXT-Video with ``llava_next_video.py``; LLaVA-Interleave uses a SigLIP vision tower and a Qwen template.
#: The bare ``llava`` pattern would otherwise take each of them for LLaVA-1.5.
UNSUPPORTED_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"llava[-_]?onevision", "LLaVA-OneVision"),
    (r"llava[-_]?interleave", "LLaVA-Interleave"),
    (r"llava[-_]?next[-_]?video|llava[-_]?video", "LLaVA-NeXT-Video"),
)


def family_for_model(model_id: str) -> Family | None:
    """The family a model id names, by pattern, most specific first (dict order); None when none matches.

    Raises ``UnsupportedModelError`` for ids of models known to need a processor no family has."""
    lowered = _model_name(model_id)
    for pattern, label in UNSUPPORTED_PATTERNS:
        if re.search(pattern, lowered):
            raise UnsupportedModelError(
                f"model {model_id!r} is a {label} model, whose image processor the harness does not reproduce "
                f"(its placeholder counts differ from every supported family: {', '.join(FAMILIES)}); pass "
                f"--mm-family only if its processor really is one of them"
            )
    for family in FAMILIES.values():
        if family.matches(model_id):
            return family
    return None


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
