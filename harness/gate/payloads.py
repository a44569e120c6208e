"""Request payloads: generated test images and chat bodies in every shape the gates send.

Images are generated with Pillow (solid colours, whose names the simulated engine reports back, and noise), so
content checks have a known right answer and no fixture files are needed.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

COLOURS: dict[str, tuple[int, int, int]] = {
    "green": (0, 200, 0),
    "red": (220, 0, 0),
    "blue": (0, 0, 230),
    "yellow": (230, 230, 0),
    "magenta": (220, 0, 220),
    "cyan": (0, 220, 220),
}


def solid_png(colour: str | tuple[int, int, int], size: tuple[int, int] = (512, 512), fmt: str = "PNG") -> bytes:
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, fmt)
    return buf.getvalue()


def noise_png(width: int, height: int, seed: int = 0) -> bytes:
    """Incompressible random pixels (about width*height*3 bytes as PNG)."""
    rng = random.Random(seed)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@dataclass(frozen=True)
class TestImage:
    """An image the harness generated: its bytes, where it is served, and what it shows."""

    name: str
    colour: str
    data: bytes
    url: str  # http URL on the harness's image server
    size: tuple[int, int] = (512, 512)

    @property
    def data_url(self) -> str:
        return data_url(self.data)

    def ref(self, inline: bool) -> str:
        return self.data_url if inline else self.url


def image_part(url: str, uuid: str | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if uuid:
        part["uuid"] = uuid
    return part


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def single_image(url: str, text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [image_part(url), text_part(text)]}]


def multi_image(urls: Sequence[str], text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [*(image_part(u) for u in urls), text_part(text)]}]


def multi_turn(url: str, text: str, answer: str, followup: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [image_part(url), text_part(text)]},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": followup},
    ]


def chat_body(model: str, messages: list[dict[str, Any]], max_tokens: int = 32, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, **extra}


def make_lora_adapter(root: Path, name: str, base_model: str, rank: int = 8, seed: int = 0) -> Path:
    """A small, valid PEFT LoRA adapter (config + safetensors) for the simulated stack's LoRA payload."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": rank,
                "lora_alpha": 2 * rank,
                "base_model_name_or_path": base_model,
                "target_modules": ["q_proj", "v_proj"],
                "bias": "none",
            }
        )
    )
    rng = np.random.default_rng(seed)
    tensors = {}
    for module in ("q_proj", "v_proj"):
        prefix = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, 64), dtype=np.float32)
        tensors[f"{prefix}.lora_B.weight"] = np.zeros((64, rank), dtype=np.float32)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path
