"""Deterministic answers, so content checks mean something.

An image prompt is answered with the image's dominant colours (a green square yields "green"); a text prompt
with a sentence derived from its last user words. The colour analysis decodes a thumbnail once per distinct
image (callers memoize by content hash).
"""

from __future__ import annotations

import colorsys
import io
from collections import Counter
from collections.abc import Sequence

from PIL import Image

_THUMB = 32
_MIN_SHARE = 0.15


def colour_name(r: int, g: int, b: int) -> str:
    h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.85 else "gray"
    deg = h * 360
    for limit, name in (
        (15, "red"),
        (45, "orange"),
        (70, "yellow"),
        (165, "green"),
        (195, "cyan"),
        (255, "blue"),
        (290, "purple"),
        (345, "magenta"),
    ):
        if deg < limit:
            return name
    return "red"


def dominant_colours(data: bytes, max_colours: int = 3) -> tuple[str, ...]:
    """Named colours covering at least 15% of the image, most common first."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (_THUMB * 4, _THUMB * 4))  # JPEG: decode at reduced scale
        # Sample first, convert after: nearest-neighbour picks the same pixels either way, and converting the
        # 32x32 sample instead of the full image keeps one decoded copy in memory rather than three.
        small = img.resize((_THUMB, _THUMB), Image.Resampling.NEAREST)
        if small.mode in ("RGBA", "LA", "PA") or (small.mode == "P" and "transparency" in small.info):
            rgba = small.convert("RGBA")
            small = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        thumb = small.convert("RGB")
    raw = thumb.tobytes()
    counts = Counter(colour_name(*px) for px in zip(raw[0::3], raw[1::3], raw[2::3], strict=True))
    total = _THUMB * _THUMB
    names = [name for name, n in counts.most_common() if n / total >= _MIN_SHARE][:max_colours]
    return tuple(names) or (counts.most_common(1)[0][0],)


def _join(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def describe_images(colours: Sequence[Sequence[str]]) -> str:
    if len(colours) == 1:
        return f"The image shows {_join(colours[0])}."
    return " ".join(f"Image {i} shows {_join(c)}." for i, c in enumerate(colours, 1))


def answer_text(last_user_text: str) -> str:
    words = last_user_text.split()
    topic = " ".join(words[-6:]) if words else "nothing"
    return f"This is a simulated answer about {topic}."
