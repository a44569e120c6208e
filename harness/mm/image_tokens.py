"""Placeholder-token counts per image, following the public processors' formulas.

Pure functions of the image's size and the processor geometry, so counting needs only the image header.
References: transformers' ``smart_resize`` (Qwen2-VL family), vLLM's ``llava_next.py`` (anyres) and
``phi3v.py`` (HD transform). See REFERENCE.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from harness.errors import ImageGeometryError


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize: both sides multiples of ``factor``, area within [min_pixels, max_pixels]."""
    if height <= 0 or width <= 0:
        raise ImageGeometryError(f"image has an empty side ({width}x{height})")
    if max(height, width) / min(height, width) > 200:
        raise ImageGeometryError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_vl_tokens(
    width: int, height: int, *, patch_size: int, merge_size: int, min_pixels: int, max_pixels: int
) -> int:
    factor = patch_size * merge_size
    h_bar, w_bar = smart_resize(height, width, factor, min_pixels, max_pixels)
    return (h_bar // factor) * (w_bar // factor)


def select_best_resolution(
    original_size: tuple[int, int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """LLaVA-NeXT: the pinpoint (height, width) that keeps the most resolution and wastes the least."""
    original_height, original_width = original_size
    best_fit: tuple[int, int] | None = None
    max_effective = 0
    min_wasted = float("inf")
    for height, width in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        down_w, down_h = int(original_width * scale), int(original_height * scale)
        effective = min(down_w * down_h, original_width * original_height)
        wasted = width * height - effective
        if effective > max_effective or (effective == max_effective and wasted < min_wasted):
            max_effective, min_wasted, best_fit = effective, wasted, (height, width)
    assert best_fit is not None
    return best_fit


def llava_next_tokens(
    width: int,
    height: int,
    *,
    image_size: int,
    patch_size: int,
    grid_pinpoints: Sequence[Sequence[int]],
) -> int:
    """Base feature (the whole image at ``image_size``) + unpadded anyres grid + one newline per row."""
    if height <= 0 or width <= 0:
        raise ImageGeometryError(f"image has an empty side ({width}x{height})")
    npatches = image_size // patch_size  # 24 for CLIP-L/14 at 336
    base = npatches * npatches
    best_h, best_w = select_best_resolution((height, width), grid_pinpoints)
    grid_h, grid_w = best_h // image_size, best_w // image_size
    cur_h, cur_w = npatches * grid_h, npatches * grid_w
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= 2 * ((cur_h - new_h) // 2)
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= 2 * ((cur_w - new_w) // 2)
    return base + cur_h * cur_w + cur_h


def _phi3v_hd_transform_size(width: int, height: int, hd_num: int, unit: int = 336) -> tuple[int, int]:
    transposed = False
    if width < height:
        width, height = height, width
        transposed = True
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= hd_num:
        scale += 1
    scale -= 1
    new_w = int(scale * unit)
    new_h = int(new_w / ratio)
    padded_h = math.ceil(new_h / unit) * unit
    if transposed:
        return padded_h, new_w
    return new_w, padded_h


def phi3v_tokens(width: int, height: int, *, num_crops: int, image_size: int = 336) -> int:
    if height <= 0 or width <= 0:
        raise ImageGeometryError(f"image has an empty side ({width}x{height})")
    new_w, new_h = _phi3v_hd_transform_size(width, height, num_crops, image_size)
    rows, cols = new_h // image_size, new_w // image_size
    return (rows * cols + 1) * 144 + 1 + (rows + 1) * 12
