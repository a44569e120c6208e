"""Deterministic answers: colour naming, dominant colours of real PNG/JPEG bytes, the phrasing of descriptions."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from harness.sim.answers import answer_text, colour_name, describe_images, dominant_colours

RGB = tuple[int, int, int]
GREEN: RGB = (0, 200, 0)
RED: RGB = (220, 0, 0)
BLUE: RGB = (0, 0, 230)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def solid(colour: RGB, fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(Image.new("RGB", size, colour), fmt)


def split(left: RGB, right: RGB, fmt: str, left_share: float = 0.5, size: tuple[int, int] = (256, 128)) -> bytes:
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, round(size[0] * left_share), size[1]))
    return encode(img, fmt)


@pytest.mark.parametrize(
    ("rgb", "name"),
    [
        ((255, 0, 0), "red"),
        ((0, 255, 0), "green"),
        ((0, 0, 255), "blue"),
        ((0, 128, 0), "green"),
        ((255, 255, 0), "yellow"),
        ((0, 255, 255), "cyan"),
        ((255, 128, 0), "orange"),
        ((255, 0, 255), "magenta"),
        ((128, 0, 255), "purple"),
        ((255, 0, 20), "red"),  # hue just below 360 wraps to red
        ((0, 0, 0), "black"),
        ((20, 20, 20), "black"),
        ((255, 255, 255), "white"),
        ((240, 240, 235), "white"),
        ((128, 128, 128), "gray"),
        ((60, 60, 60), "gray"),
    ],
)
def test_colour_name(rgb: RGB, name: str) -> None:
    assert colour_name(*rgb) == name


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize(("rgb", "name"), [(GREEN, "green"), (RED, "red"), (BLUE, "blue")])
def test_dominant_colour_of_solid_image(fmt: str, rgb: RGB, name: str) -> None:
    assert dominant_colours(solid(rgb, fmt)) == (name,)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_half_green_half_red_names_both(fmt: str) -> None:
    names = dominant_colours(split(GREEN, RED, fmt))
    assert set(names) == {"green", "red"}
    assert len(names) == 2


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_most_common_colour_first(fmt: str) -> None:
    assert dominant_colours(split(GREEN, RED, fmt, left_share=0.75)) == ("green", "red")
    assert dominant_colours(split(GREEN, RED, fmt, left_share=0.25)) == ("red", "green")


def test_minor_colour_below_threshold_is_dropped() -> None:
    # 10% blue is under the 15% share a colour needs to be named.
    assert dominant_colours(split(BLUE, GREEN, "PNG", left_share=0.1, size=(320, 64))) == ("green",)


def test_large_jpeg_uses_draft_decoding() -> None:
    data = split(GREEN, BLUE, "JPEG", size=(2048, 1024))
    assert set(dominant_colours(data)) == {"green", "blue"}


def test_max_colours_limits_names() -> None:
    img = Image.new("RGB", (300, 60), GREEN)
    img.paste(RED, (100, 0, 200, 60))
    img.paste(BLUE, (200, 0, 300, 60))
    data = encode(img, "PNG")
    assert set(dominant_colours(data)) == {"green", "red", "blue"}
    assert len(dominant_colours(data, max_colours=2)) == 2


def test_palette_and_grayscale_images() -> None:
    pal = Image.new("RGB", (40, 40), RED).convert("P")
    assert dominant_colours(encode(pal, "PNG")) == ("red",)
    gray = Image.new("L", (40, 40), 128)
    assert dominant_colours(encode(gray, "PNG")) == ("gray",)


def test_many_colours_none_dominant_returns_most_common() -> None:
    img = Image.new("RGB", (320, 32))
    colours = [
        (255, 0, 0),
        (255, 128, 0),
        (255, 255, 0),
        (0, 255, 0),
        (0, 255, 255),
        (0, 0, 255),
        (128, 0, 255),
        (255, 0, 255),
        (0, 0, 0),
        (255, 255, 255),
    ]
    for i, c in enumerate(colours):
        img.paste(c, (32 * i, 0, 32 * (i + 1), 32))
    names = dominant_colours(encode(img, "PNG"))
    assert len(names) == 1
    assert names[0] in {colour_name(*c) for c in colours}


def test_not_an_image_raises() -> None:
    with pytest.raises(OSError):
        dominant_colours(b"definitely not an image")


def test_describe_one_image() -> None:
    assert describe_images([("green",)]) == "The image shows green."
    assert describe_images([("green", "red")]) == "The image shows green and red."
    assert describe_images([("green", "red", "blue")]) == "The image shows green, red and blue."


def test_describe_several_images() -> None:
    assert describe_images([("green",), ("red", "blue")]) == "Image 1 shows green. Image 2 shows red and blue."
    text = describe_images([("white",), ("black",), ("gray", "cyan", "yellow")])
    assert text == "Image 1 shows white. Image 2 shows black. Image 3 shows gray, cyan and yellow."


def test_describe_from_real_images() -> None:
    colours = [dominant_colours(solid(GREEN, "PNG")), dominant_colours(split(GREEN, RED, "PNG", left_share=0.75))]
    assert describe_images(colours) == "Image 1 shows green. Image 2 shows green and red."


def test_answer_text_uses_last_six_words() -> None:
    assert answer_text("please tell me about the capital city of France") == (
        "This is a simulated answer about about the capital city of France."
    )
    assert answer_text("hi") == "This is a simulated answer about hi."
    assert answer_text("   ") == "This is a simulated answer about nothing."
