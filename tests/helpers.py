"""Helpers the tests import: the harness's own payload builders, plus the one shape tests use everywhere."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from harness.gate.payloads import data_url, image_part, noise_png, text_part
from harness.gate.payloads import solid_png as png_bytes
from harness.sim.engine import Engine

MODEL = "Qwen/Qwen3-VL-2B-Instruct"

__all__ = ["MODEL", "data_url", "image_message", "noise_png", "png_bytes", "run_engine"]

T = TypeVar("T")


def image_message(url: str, text: str = "What colour is this image?", uuid: str | None = None) -> list[dict]:
    """One user turn: an image part (with an optional ``uuid``) followed by a question."""
    return [{"role": "user", "content": [image_part(url, uuid), text_part(text)]}]


def run_engine(engine: Engine, body: Callable[[], Awaitable[T]]) -> T:
    """Run ``body`` with the engine loop started inside one event loop, stopping the engine afterwards."""

    async def main() -> T:
        engine.start()
        try:
            return await body()
        finally:
            await engine.stop()

    return asyncio.run(main())
