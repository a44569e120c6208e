"""Placeholder-token counts per family, checked against hand-computed values of the public formulas.

Every expected number below is derived in a comment from the formula in REFERENCE.md / the upstream processor,
not copied from the function under test.
"""

from __future__ import annotations

import pytest

from harness.mm.families import FAMILIES, family_for_model, get_family
from harness.mm.image_tokens import (
    ImageGeometryError,
    llava_next_tokens,
    phi3v_tokens,
    qwen_vl_tokens,
    select_best_resolution,
    smart_resize,
)

QWEN2_HUB = {"patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056}
QWEN3_HUB = {"patch_size": 16, "merge_size": 2, "min_pixels": 65536, "max_pixels": 16777216}
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


# --------------------------------------------------------------------------------------------- Qwen2/2.5-VL


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        # 1024x768: h 768/28 = 27.43 -> 27 -> 756; w 1024/28 = 36.57 -> 37 -> 1036; area 783216 is within
        # [3136, 12845056]; tokens 27 * 37 = 999.
        (1024, 768, 999),
        # 1920x1080: h 1080/28 = 38.57 -> 39 -> 1092; w 1920/28 = 68.57 -> 69 -> 1932; area in bounds;
        # tokens 39 * 69 = 2691.
        (1920, 1080, 2691),
        # 28x28: exactly one merged patch, area 784 < 3136 -> min clamp: beta = sqrt(3136/784) = 2,
        # side = ceil(28*2/28)*28 = 56 -> 2 * 2 = 4 tokens.
        (28, 28, 4),
    ],
)
def test_qwen2_family_hub_config(family: str, width: int, height: int, expected: int) -> None:
    fam = get_family(family)
    assert fam.defaults == QWEN2_HUB
    assert fam.count_tokens(width, height, fam.defaults) == expected
    assert qwen_vl_tokens(width, height, **QWEN2_HUB) == expected


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        # factor 32: 1024/32 = 32, 768/32 = 24, both exact; area 786432 within [65536, 16777216] -> 32*24 = 768.
        (1024, 768, 768),
        # 640/32 = 20, 480/32 = 15; area 307200 in bounds -> 20 * 15 = 300.
        (640, 480, 300),
    ],
)
def test_qwen3_vl_hub_config(width: int, height: int, expected: int) -> None:
    fam = get_family("qwen3_vl")
    assert fam.defaults == QWEN3_HUB
    assert fam.count_tokens(width, height, fam.defaults) == expected
    assert qwen_vl_tokens(width, height, **QWEN3_HUB) == expected


def test_qwen3_min_pixels_clamp() -> None:
    # 120x90 at factor 32: round(3.75) = 4 -> 128, round(2.81) = 3 -> 96; 12288 < 65536 -> beta =
    # sqrt(65536/10800) = 2.46335; h = ceil(90*2.46335/32) = ceil(6.93) = 7 -> 224; w = ceil(120*2.46335/32) =
    # ceil(9.24) = 10 -> 320. Tokens 7 * 10 = 70.
    assert smart_resize(90, 120, 32, 65536, 16777216) == (224, 320)
    assert FAMILIES["qwen3_vl"].count_tokens(120, 90, QWEN3_HUB) == 70


def test_smart_resize_rounds_half_to_even() -> None:
    # 42/28 = 1.5 -> round() -> 2 (half to even) -> 56; 70/28 = 2.5 -> 2 -> 56. Both within bounds.
    assert smart_resize(42, 70, 28, 0, 10**9) == (56, 56)
    # 98/28 = 3.5 -> 4 -> 112.
    assert smart_resize(98, 98, 28, 0, 10**9) == (112, 112)


def test_smart_resize_max_clamp_transformers_default() -> None:
    # 1920x1080 with the transformers class default max_pixels 1003520: rounded 1092x1932 = 2109744 > max ->
    # beta = sqrt(1920*1080 / 1003520) = sqrt(2.0663) = 1.43747; h = floor(1080/1.43747/28) = floor(26.83) = 26
    # -> 728; w = floor(1920/1.43747/28) = floor(47.70) = 47 -> 1316.
    assert smart_resize(1080, 1920, 28, 3136, 1003520) == (728, 1316)
    assert qwen_vl_tokens(1920, 1080, patch_size=14, merge_size=2, min_pixels=3136, max_pixels=1003520) == 26 * 47
    assert 728 * 1316 <= 1003520


def test_smart_resize_min_clamp() -> None:
    # 100x50 with min_pixels 50000: rounded 112x56 = 6272 < 50000 -> beta = sqrt(50000/5000) = sqrt(10) = 3.1623;
    # h = ceil(50*3.1623/28) = ceil(5.647) = 6 -> 168; w = ceil(100*3.1623/28) = ceil(11.29) = 12 -> 336.
    assert smart_resize(50, 100, 28, 50000, 12845056) == (168, 336)
    assert qwen_vl_tokens(100, 50, patch_size=14, merge_size=2, min_pixels=50000, max_pixels=12845056) == 72


def test_smart_resize_max_clamp_keeps_at_least_one_factor() -> None:
    # 5600x28 (aspect exactly 200, allowed) with max 7840: beta = sqrt(156800/7840) = sqrt(20) = 4.472;
    # h = max(28, floor(28/4.472/28)*28 = 0) = 28; w = floor(5600/4.472/28) = floor(44.72) = 44 -> 1232.
    assert smart_resize(28, 5600, 28, 3136, 7840) == (28, 1232)


def test_aspect_ratio_limit() -> None:
    smart_resize(28, 28 * 200, 28, 3136, 12845056)  # exactly 200: allowed
    with pytest.raises(ImageGeometryError, match="aspect ratio"):
        smart_resize(10, 2010, 28, 3136, 12845056)  # 201
    with pytest.raises(ImageGeometryError, match="aspect ratio"):
        qwen_vl_tokens(1, 201, **QWEN2_HUB)  # tall images too (width 1, height 201)
    with pytest.raises(ImageGeometryError):
        FAMILIES["qwen3_vl"].count_tokens(5000, 20, QWEN3_HUB)  # 250


@pytest.mark.parametrize(("w", "h"), [(0, 10), (10, 0), (-5, 10)])
def test_empty_side_is_an_error_for_every_family(w: int, h: int) -> None:
    for fam in FAMILIES.values():
        with pytest.raises(ImageGeometryError, match="empty side"):
            fam.count_tokens(w, h, fam.defaults)


# ------------------------------------------------------------------------------------------------- LLaVA


@pytest.mark.parametrize(("w", "h"), [(336, 336), (1, 1), (1920, 1080), (100, 3000)])
def test_llava_15_fixed_576(w: int, h: int) -> None:
    fam = get_family("llava")
    # (336 // 14) ** 2 = 24 ** 2 = 576 whatever the image size.
    assert fam.count_tokens(w, h, fam.defaults) == 576


def test_llava_15_follows_config() -> None:
    # CLIP at 224 with patch 14: (224 // 14) ** 2 = 16 ** 2 = 256.
    assert get_family("llava").count_tokens(500, 500, {"image_size": 224, "patch_size": 14}) == 256


# All LLaVA-NeXT cases: base = 24*24 = 576 (336/14 = 24 patches a side); select_best_resolution over the hub
# pinpoints (height, width) picks the one with the largest effective resolution min(downscaled area, original
# area), ties broken by least waste (pinpoint area - effective), first wins on a full tie. Grid = pinpoint/336;
# current = 24*grid. Unpadding: if image aspect > current aspect, new_h = round(h * cur_w / w) and
# cur_h -= 2*((cur_h - new_h)//2); else the same on the width. Total = 576 + cur_h*cur_w + cur_h (newlines).
@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        # 336x336: (336,672) scale min(2,1)=1 -> eff 336*336=112896, waste 112896; (672,336) same eff and waste
        # (not smaller, first kept); (672,672) eff 112896 waste 338688; (1008,336)/(336,1008) waste 225792.
        # -> grid 1x2, cur 24x48; aspect 1 <= 2 -> new_w = 336*24/336 = 24, cur_w = 48 - 2*12 = 24.
        # 576 + 24*24 + 24 = 1176.
        (336, 336, 1176),
        # 672x336: (336,672) scale 1 -> eff 225792 waste 0: best. grid 1x2, cur 24x48; aspect 2 == 2 -> width
        # branch: new_w = 672*24/336 = 48, no padding. 576 + 24*48 + 24 = 1752.
        (672, 336, 1752),
        # 1000x500: (336,672) scale min(.672,.672) -> 672x336 = 225792 (< 500000 original), waste 0; (672,672) and
        # (336,1008) reach the same eff with waste > 0; others scale .336. grid 1x2, cur 24x48; aspect 2 == 2 ->
        # new_w = 1000*24/500 = 48, no padding. 576 + 1152 + 24 = 1752.
        (1000, 500, 1752),
        # 1000x400: (336,672) scale .672 -> 672x268 = 180096; (336,1008) scale min(1.008,.84) = .84 -> 840x336 =
        # 282240: best. grid 1x3, cur 24x72; aspect 2.5 <= 3 -> new_w = 1000*24/400 = 60, pad (72-60)//2 = 6,
        # cur_w = 60. 576 + 24*60 + 24 = 2040.
        (1000, 400, 2040),
        # 500x1000 (tall): (672,336) scale min(.672,.672) -> 336x672 = 225792 waste 0: best. grid 2x1, cur 48x24;
        # aspect .5 == .5 -> new_w = 500*48/1000 = 24, no padding. 576 + 48*24 + 48 = 1776.
        (500, 1000, 1776),
        # 800x300: (336,672) scale .84 -> 672x252 = 169344; (336,1008) scale min(1.26,1.12) = 1.12 -> 896x336 =
        # 301056, capped at the original 240000: best. grid 1x3, cur 24x72; aspect 2.67 <= 3 -> new_w =
        # 800*24/300 = 64, pad 4, cur_w = 64. 576 + 24*64 + 24 = 2136.
        (800, 300, 2136),
        # 1008x672: (672,672) scale min(2/3, 1) -> 672x448 = 301056: best (others <= 169344). grid 2x2, cur 48x48;
        # aspect 1.5 > 1 -> height branch: new_h = 672*48/1008 = 32, pad (48-32)//2 = 8, cur_h = 32.
        # 576 + 32*48 + 32 = 2144.
        (1008, 672, 2144),
    ],
)
def test_llava_next_anyres(width: int, height: int, expected: int) -> None:
    fam = get_family("llava_next")
    assert fam.count_tokens(width, height, fam.defaults) == expected
    assert llava_next_tokens(width, height, image_size=336, patch_size=14, grid_pinpoints=LLAVA_NEXT_PINPOINTS) == (
        expected
    )


@pytest.mark.parametrize(
    ("size_hw", "best"),
    [((336, 336), (336, 672)), ((500, 1000), (336, 672)), ((1000, 500), (672, 336)), ((400, 1000), (336, 1008))],
)
def test_select_best_resolution(size_hw: tuple[int, int], best: tuple[int, int]) -> None:
    """Arguments and result are (height, width), as in transformers."""
    assert select_best_resolution(size_hw, LLAVA_NEXT_PINPOINTS) == best


def test_llava_next_single_pinpoint() -> None:
    # Only (336,336): grid 1x1, cur 24x24. 640x480: aspect 1.33 > 1 -> new_h = round(480*24/640) = 18,
    # pad (24-18)//2 = 3, cur_h = 18. 576 + 18*24 + 18 = 1026.
    assert llava_next_tokens(640, 480, image_size=336, patch_size=14, grid_pinpoints=[[336, 336]]) == 1026


# ------------------------------------------------------------------------------------------- Phi-3-vision


# HD transform (vLLM phi3v.py): landscape-normalise (swap if w < h); ratio = w/h; largest scale with
# scale * ceil(scale/ratio) <= num_crops; new_w = 336*scale, new_h = int(new_w/ratio) padded up to a multiple of
# 336; swap back. Tokens = (rows*cols + 1)*144 + 1 + (rows + 1)*12 with rows = H'/336, cols = W'/336.
@pytest.mark.parametrize(
    ("width", "height", "num_crops", "expected"),
    [
        # 1024x768, 16 crops: ratio 4/3; scale 4 -> 4*ceil(3) = 12 <= 16, scale 5 -> 5*ceil(3.75) = 20 > 16.
        # new 1344x1008 (already a multiple of 336): rows 3, cols 4. (12+1)*144 + 1 + 4*12 = 1872+1+48 = 1921.
        (1024, 768, 16, 1921),
        # 768x1024 (portrait): same transform transposed -> W' 1008, H' 1344: rows 4, cols 3.
        # (12+1)*144 + 1 + 5*12 = 1933 (the newline term depends on rows, so not symmetric).
        (768, 1024, 16, 1933),
        # 1024x768, 4 crops: scale 2 -> 2*ceil(1.5) = 4 <= 4; scale 3 -> 9 > 4. new 672x504 -> pad 672: rows 2,
        # cols 2. (4+1)*144 + 1 + 3*12 = 720+1+36 = 757.
        (1024, 768, 4, 757),
        (768, 1024, 4, 757),  # 2x2 either way
        # 336x336, 16 crops: ratio 1, scale 4 (16 <= 16). 1344x1344: rows=cols=4. 17*144 + 1 + 5*12 = 2509.
        (336, 336, 16, 2509),
        # 336x336, 4 crops: scale 2 -> 672x672: 5*144 + 1 + 3*12 = 757.
        (336, 336, 4, 757),
        # 2000x500, 4 crops: ratio 4; scale 4 -> 4*ceil(1) = 4 <= 4, scale 5 -> 5*2 = 10 > 4. new_w 1344,
        # new_h 336: rows 1, cols 4. (4+1)*144 + 1 + 2*12 = 745.
        (2000, 500, 4, 745),
    ],
)
def test_phi3v(width: int, height: int, num_crops: int, expected: int) -> None:
    assert phi3v_tokens(width, height, num_crops=num_crops) == expected
    fam = get_family("phi3_v")
    assert fam.count_tokens(width, height, {"num_crops": num_crops}) == expected


def test_phi3v_default_num_crops_is_16() -> None:
    fam = get_family("phi3_v")
    assert fam.defaults["num_crops"] == 16
    assert fam.count_tokens(1024, 768, fam.defaults) == 1921


# --------------------------------------------------------------------------------------------- families


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"),
        ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"),
        ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
        ("llava-hf/llava-1.5-7b-hf", "llava"),
        ("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next"),
        ("llava-hf/llava-next-72b-hf", "llava_next"),
        ("microsoft/Phi-3-vision-128k-instruct", "phi3_v"),
        ("microsoft/Phi-3.5-vision-instruct", "phi3_v"),
    ],
)
def test_family_for_model(model: str, family: str) -> None:
    found = family_for_model(model)
    assert found is not None
    assert found.name == family


def test_family_for_unknown_model() -> None:
    assert family_for_model("meta-llama/Llama-3.1-8B-Instruct") is None


def test_get_family_unknown_lists_known() -> None:
    with pytest.raises(ValueError, match="qwen2_vl"):
        get_family("nope")


def test_pad_tokens_are_special_tokens() -> None:
    from harness.mm.tokenizer import SPECIAL_IDS

    for fam in FAMILIES.values():
        assert fam.pad_token in SPECIAL_IDS
