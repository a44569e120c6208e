"""The gate's independent oracle: what a correct stack must report, computed without asking the stack.

Three sources, in order of authority:

- **reference**: ``harness.mm``'s image-token formulas for the family and the processor settings the stack was
  *declared* with (the case's worker arguments), the chat template, the block size the topology declares, and
  vLLM's prefix-cache rules (whole blocks only; the last prompt token is always recomputed). The formulas are
  themselves pinned to published values (``ANCHORS``) so a fault in the shared core cannot move the reference
  and the stack together.
- **probe**: calibration requests sent straight to a worker, never through the router under test:
  ``prompt_tokens`` with and without an image measures the stack's image-token count; ``/tokenize`` of two
  prompts that differ only in their first user text measures the shared template prefix.
- **stack render**: the worker's ``/v1/chat/completions/render``, where it has one. It is *compared* with the
  reference, never used in its place.

Every threshold the gate uses is a ``Threshold`` naming its source and value, written into the case record.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from harness.mm import tokenizer
from harness.mm.families import FAMILIES, Family
from harness.mm.geometry import ImageGeometry
from harness.mm.options import MMOptions, add_mm_arguments, pop_mm_options
from harness.mm.prompt import ImagePart, Prompt, parse_chat, render_chat

Source = Literal["reference", "probe", "stack render", "declared", "stack"]


@dataclass(frozen=True)
class Threshold:
    """One number a check compares against, and where it came from."""

    name: str
    value: int
    source: Source
    detail: str = ""

    def record(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "detail": self.detail}


# -- vLLM's prefix-cache rules -----------------------------------------------------------------------------------
def whole_blocks(tokens: int, block_size: int) -> int:
    """Tokens in the full blocks of the first ``tokens`` tokens (only full blocks are hashed and cached:
    ``vllm/v1/core/kv_cache_utils.py`` hashes ``num_tokens // block_size`` blocks)."""
    return max(tokens, 0) // block_size * block_size


def cache_hit_cap(prompt_tokens: int, block_size: int) -> int:
    """The most a request can report cached: whole blocks of ``prompt_tokens - 1``. vLLM never serves the last
    prompt token from the cache (``vllm/v1/core/kv_cache_manager.py`` ``get_computed_blocks``:
    ``max_cache_hit_length = request.num_tokens - 1``), so a fully cached prompt of P tokens reports
    ``floor((P - 1) / B) * B``."""
    return whole_blocks(prompt_tokens - 1, block_size)


def expected_hit(shared_tokens: int, prompt_tokens: int, block_size: int) -> int:
    """Cached tokens of a request whose first ``shared_tokens`` tokens (with their image keys) are cached."""
    return whole_blocks(min(shared_tokens, prompt_tokens - 1), block_size)


# -- published anchors for the formulas --------------------------------------------------------------------------
#: (width, height, tokens) at each family's hub defaults, from the model cards / REFERENCE.md, computed by hand:
#: Qwen3-VL factor 32: 1024x768 -> 32*24 = 768, 640x480 -> 20*15 = 300, 512x512 -> 16*16 = 256.
#: Qwen2(.5)-VL factor 28: 1024x768 -> round(768/28)=27 * round(1024/28)=37 = 999; 1920x1080 -> 39*69 = 2691;
#: 512x512 -> 18*18 = 324. LLaVA-1.5: (336/14)^2 = 576 whatever the size.
ANCHORS: Mapping[str, tuple[tuple[int, int, int], ...]] = {
    "qwen3_vl": ((1024, 768, 768), (640, 480, 300), (512, 512, 256)),
    "qwen2_5_vl": ((1024, 768, 999), (1920, 1080, 2691), (512, 512, 324)),
    "qwen2_vl": ((1024, 768, 999), (1920, 1080, 2691), (512, 512, 324)),
    "llava": ((512, 512, 576), (1024, 768, 576)),
}


def anchor_problems(family: Family) -> list[str]:
    """Where the shared core's formula for ``family`` (at its hub defaults) departs from the published values."""
    out = []
    for width, height, tokens in ANCHORS.get(family.name, ()):
        got = family.count_tokens(width, height, family.defaults)
        if got != tokens:
            out.append(f"{family.name} {width}x{height}: formula gives {got}, published {tokens}")
    return out


# -- what the stack was declared with ----------------------------------------------------------------------------
def declared_mm_options(worker_args: Sequence[str], family: str | None) -> MMOptions:
    """The multimodal flags the case passes its workers (``--mm-processor-kwargs`` etc.), parsed as the worker
    parses them; the family the profile names when the arguments do not."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    add_mm_arguments(parser)
    # Split as lib.sh does (``extra=($HARNESS_EXTRA_WORKER_ARGS)``): on whitespace, quotes kept, so JSON survives.
    words = [w for arg in worker_args for w in arg.split()]
    try:
        known, _ = parser.parse_known_args(words)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ValueError(f"the case's worker arguments do not parse: {exc}") from None
    values = vars(known)
    if not values.get("mm_family"):
        values["mm_family"] = family
    return pop_mm_options(values)


# -- the reference layout of a request ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RefImage:
    """An image as the oracle knows it: identity (the part's uuid, else its bytes' digest) and size."""

    key: str
    size: tuple[int, int]


@dataclass(frozen=True)
class Layout:
    """A request as the reference renders it: its token count and each image's placeholder run."""

    prompt: Prompt
    #: Per position, the image identity keyed into its block (None outside placeholder runs).
    salt: str | None = None
    adapter: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt.num_tokens

    @property
    def images(self) -> list[tuple[int, int]]:
        return [(it.offset, it.length) for it in self.prompt.mm_items]

    def keyed(self) -> list[tuple[int, str | None]]:
        """Each token with the image it belongs to: two prompts share a cached block only where these agree."""
        owner: list[str | None] = [None] * self.tokens
        for it in self.prompt.mm_items:
            for i in range(it.offset, it.offset + it.length):
                owner[i] = it.hash
        return list(zip(self.prompt.token_ids, owner, strict=True))


def shared_prefix(a: Layout, b: Layout) -> int:
    """Tokens two requests share from the start, images compared by identity; zero when the cache salt or the
    LoRA adapter differ (both are keyed into every chain from its first block)."""
    if a.salt != b.salt or a.adapter != b.adapter:
        return 0
    n = 0
    for x, y in zip(a.keyed(), b.keyed(), strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Reference:
    """The reference computation for one stack: family, declared geometry and block size."""

    geometry: ImageGeometry
    block_size: int
    #: Added to every reference offset: the stack's template prefix minus the reference's (calibration).
    shift: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> Family:
        return self.geometry.family

    def image_tokens(self, size: tuple[int, int]) -> int:
        return self.geometry.num_tokens(*size)

    @property
    def marker_tokens(self) -> int:
        """Tokens an image part adds besides its placeholder run (Qwen's vision start/end markers)."""
        return tokenizer.count(self.family.prefix + self.family.suffix) if self.family.prefix else 1

    def layout(
        self,
        messages: list[dict[str, Any]],
        images: Sequence[RefImage],
        *,
        salt: str | None = None,
        adapter: str | None = None,
    ) -> Layout:
        turns = parse_chat(messages)
        parts = [p for t in turns for p in t.parts if isinstance(p, ImagePart)]
        if len(parts) != len(images):
            raise ValueError(f"{len(parts)} image parts but {len(images)} reference images")
        counts = [(p.uuid or im.key, self.image_tokens(im.size)) for p, im in zip(parts, images, strict=True)]
        return Layout(render_chat(turns, self.family, counts), salt, adapter)

    def offsets(self, layout: Layout) -> list[tuple[int, int]]:
        """(offset, length) of each image, in the stack's coordinates (reference + calibrated shift)."""
        return [(off + self.shift, length) for off, length in layout.images]

    def template_prefix(self, texts: tuple[str, str] = ("Alpha", "Omega")) -> int:
        """Tokens two one-turn text chats share when only their first user text differs: the template prefix,
        measured on the reference exactly as the probe measures it on the stack."""
        a, b = (render_chat(parse_chat(text_chat(t)), self.family, []).token_ids for t in texts)
        return common_prefix(a, b)


def text_chat(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def family_of(name: str | None) -> Family | None:
    return FAMILIES.get(name) if name else None
