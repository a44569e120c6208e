"""Request body -> prompt: the one pipeline the simulated engine and the proxy both run.

The proxy hashes the blocks a worker will cache, so both must read a body identically: the same validation
(messages, image limit, ``cache_salt``), the same image resolution and the same template. Anything one of them
accepts and the other rejects, or renders differently, shows up as routing on keys the worker never stores.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import blake3

from harness.errors import ApiError, PromptError
from harness.mm.families import Family
from harness.mm.hashing import BlockKeyContext
from harness.mm.prompt import (
    ImagePart,
    Prompt,
    Turn,
    completion_prompts,
    image_parts,
    parse_chat,
    render_chat,
    render_text,
)
from harness.mm.resolver import ImageResolver, ResolvedImage
from harness.mm.text import TextTokenizer


@dataclass(frozen=True)
class RenderedRequest:
    """What a body turned into: the prompt, plus what the engine needs besides token ids."""

    prompt: Prompt
    #: The chat turns (empty for /v1/completions).
    turns: tuple[Turn, ...]
    #: Resolved images, in prompt order (empty when images are left out of the prompt).
    images: tuple[ResolvedImage, ...]
    cache_salt: str | None
    #: Every prompt of a /v1/completions batch (``prompt`` is the first); one element otherwise.
    prompts: tuple[Prompt, ...] = ()

    @property
    def batch(self) -> tuple[Prompt, ...]:
        return self.prompts or (self.prompt,)

    def key_context(self, lora_name: str | None = None, lora_path: str | None = None) -> BlockKeyContext:
        return BlockKeyContext(lora_name=lora_name, lora_path=lora_path, cache_salt=self.cache_salt)

    def last_user_text(self) -> str:
        for turn in reversed(self.turns):
            if turn.role == "user":
                return " ".join(p for p in turn.parts if isinstance(p, str))
        return ""


def cache_salt_of(body: dict[str, Any]) -> str | None:
    """vLLM's ``check_cache_salt_support`` (``vllm/entrypoints/openai/protocol.py``): a salt, when given, must be
    a non-empty string."""
    salt = body.get("cache_salt")
    if salt is None:
        return None
    if not isinstance(salt, str) or not salt:
        raise ApiError(400, "Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt")
    return salt


def mm_processor_kwargs_of(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's ``mm_processor_kwargs`` (``ChatCompletionRequest.mm_processor_kwargs: dict[str, Any] | None``
    in vLLM's chat protocol): an object or nothing."""
    value = body.get("mm_processor_kwargs")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise PromptError(
            "1 validation error: mm_processor_kwargs: Input should be a valid dictionary", "mm_processor_kwargs"
        )
    return value or None


def kwargs_image_hash(base: str, kwargs: Mapping[str, Any]) -> str:
    """An image's hash under per-request processor kwargs. vLLM hashes the kwargs with the item, even when the part
    names a ``uuid`` (``ProcessorInputs.get_mm_hashes`` in ``vllm/multimodal/processing/inputs.py``: "we still
    compute a hash if hf_processor_mm_kwargs is provided"), so the same image at another ``max_pixels`` is another
    cache entry and its blocks other blocks."""
    canonical = json.dumps(dict(kwargs), sort_keys=True, separators=(",", ":"), default=str)
    return blake3.blake3(f"{base}\x00mm_processor_kwargs\x00{canonical}".encode()).hexdigest()


def apply_processor_kwargs(
    resolver: ImageResolver, images: Sequence[ResolvedImage], kwargs: Mapping[str, Any]
) -> tuple[ResolvedImage, ...]:
    """Each image recounted with the kwargs applied to the geometry (``max_pixels``, the ``size`` form, ``num_crops``)
    and rehashed with them."""
    try:
        geometry = resolver.geometry.with_overrides(kwargs)
    except ValueError as exc:
        raise PromptError(f"mm_processor_kwargs: {exc}", "mm_processor_kwargs") from None
    out = []
    for im in images:
        facts = dataclasses.replace(im.facts, tokens=geometry.num_tokens(im.facts.width, im.facts.height))
        out.append(dataclasses.replace(im, hash=kwargs_image_hash(im.hash, kwargs), facts=facts))
    return tuple(out)


def check_image_limit(turns: Sequence[Turn], limit: int) -> None:
    count = len(image_parts(turns))
    if count > limit:
        raise PromptError(f"At most {limit} image(s) may be provided in one prompt.", "messages")


async def resolve_images(resolver: ImageResolver, parts: Sequence[ImagePart]) -> tuple[ResolvedImage, ...]:
    """All images of one request at once (a slow URL does not queue the others); a failure is reported for
    the first failing part in prompt order, whichever failed first in time."""
    results = await asyncio.gather(*(resolver.resolve(p) for p in parts), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return tuple(r for r in results if not isinstance(r, BaseException))


def _prompt_size(value: Any) -> int:
    """Characters of a completion ``prompt`` (text, token ids, or a batch of either), without tokenizing."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) if isinstance(v, (str, list)) else 1 for v in value)
    return 0


def text_chars(body: dict[str, Any], chat: bool) -> int:
    """Characters of text in a body (chat text parts, or the completion prompt), counted without tokenizing."""
    if not chat:
        return _prompt_size(body.get("prompt"))
    return sum(len(p) for t in parse_chat(body.get("messages")) for p in t.parts if isinstance(p, str))


def check_prompt_size(size: int, limit: int | None, param: str) -> None:
    """Refuse text that cannot fit before it is tokenized: tokenizing megabytes blocks a server for seconds."""
    if limit is not None and size > limit:
        raise PromptError(
            f"The prompt has {size} characters, more than the {limit} this server accepts (the model's context "
            f"cannot hold more). Please reduce the length of the input.",
            param,
        )


async def render_request(
    body: dict[str, Any],
    *,
    chat: bool,
    family: Family,
    resolver: ImageResolver | None,
    image_limit: int,
    max_prompt_chars: int | None = None,
    tokenizer: TextTokenizer | None = None,
) -> RenderedRequest:
    """Validate and render ``body`` with ``tokenizer`` (None: the stand-in).

    ``resolver`` None renders chat text only, images left out of the prompt altogether (the degraded
    ``kv_text`` routing key); the engine always passes its resolver. Text over ``max_prompt_chars`` characters
    is refused before it is tokenized. A /v1/completions batch renders every prompt (``prompts``).
    """
    salt = cache_salt_of(body)
    if not chat:
        prompt = body.get("prompt")
        check_prompt_size(_prompt_size(prompt), max_prompt_chars, "prompt")
        prompts = tuple(render_text(p, tokenizer) for p in completion_prompts(prompt))
        return RenderedRequest(prompts[0], (), (), salt, prompts)
    turns = tuple(parse_chat(body.get("messages")))
    check_prompt_size(sum(len(p) for t in turns for p in t.parts if isinstance(p, str)), max_prompt_chars, "messages")
    check_image_limit(turns, image_limit)
    kwargs = mm_processor_kwargs_of(body)
    add_gen = bool(body.get("add_generation_prompt", True))
    if resolver is None:
        text_turns = [Turn(t.role, [p for p in t.parts if isinstance(p, str)]) for t in turns]
        rendered = render_chat(text_turns, family, [], add_generation_prompt=add_gen, tokenizer=tokenizer)
        return RenderedRequest(rendered, turns, (), salt)
    images = await resolve_images(resolver, image_parts(turns))
    if kwargs:
        images = apply_processor_kwargs(resolver, images, kwargs)
    prompt = render_chat(
        turns, family, [(im.hash, im.tokens) for im in images], add_generation_prompt=add_gen, tokenizer=tokenizer
    )
    return RenderedRequest(prompt, turns, images, salt)
