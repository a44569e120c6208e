"""Helpers the tests import: generated images and request bodies."""

from __future__ import annotations

import base64
import io
import random

from PIL import Image

MODEL = "Qwen/Qwen3-VL-2B-Instruct"


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (512, 512), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_message(url: str, text: str = "What colour is this image?", uuid: str | None = None) -> list[dict]:
    part: dict = {"type": "image_url", "image_url": {"url": url}}
    if uuid:
        part["uuid"] = uuid
    return [{"role": "user", "content": [part, {"type": "text", "text": text}]}]


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """Random pixels: PNG cannot compress them, so the file is about width*height*3 bytes."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()
