"""Helpers the tests import: the harness's own payload builders, plus the one shape tests use everywhere."""

from __future__ import annotations

from harness.payloads import data_url, image_part, noise_png, text_part
from harness.payloads import solid_png as png_bytes

MODEL = "Qwen/Qwen3-VL-2B-Instruct"

__all__ = ["MODEL", "data_url", "image_message", "noise_png", "png_bytes"]


def image_message(url: str, text: str = "What colour is this image?", uuid: str | None = None) -> list[dict]:
    """One user turn: an image part (with an optional ``uuid``) followed by a question."""
    return [{"role": "user", "content": [image_part(url, uuid), text_part(text)]}]
