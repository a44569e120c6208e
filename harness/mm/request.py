"""Request body -> prompt: the one pipeline the simulated engine and the proxy both run.

The proxy hashes the blocks a worker will cache, so both must read a body identically: the same validation
(messages, image limit, ``cache_salt``), the same image resolution and the same template. Anything one of them
accepts and the other rejects, or renders differently, shows up as routing on keys the worker never stores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness.errors import ApiError, PromptError
from harness.mm.families import Family
from harness.mm.hashing import BlockKeyContext
from harness.mm.prompt import ImagePart, Prompt, Turn, completion_prompt, image_parts, parse_chat, render_chat
from harness.mm.resolver import ImageResolver, ResolvedImage


@dataclass(frozen=True)
class RenderedRequest:
    """What a body turned into: the prompt, plus what the engine needs besides token ids."""

    prompt: Prompt
    #: The chat turns (empty for /v1/completions).
    turns: tuple[Turn, ...]
    #: Resolved images, in prompt order (empty when images are left out of the prompt).
    images: tuple[ResolvedImage, ...]
    cache_salt: str | None

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
) -> RenderedRequest:
    """Validate and render ``body``.

    ``resolver`` None renders chat text only, images left out of the prompt altogether (the degraded
    ``kv_text`` routing key); the engine always passes its resolver. Text over ``max_prompt_chars`` characters
    is refused before it is tokenized.
    """
    salt = cache_salt_of(body)
    if not chat:
        prompt = body.get("prompt")
        check_prompt_size(_prompt_size(prompt), max_prompt_chars, "prompt")
        return RenderedRequest(completion_prompt(prompt), (), (), salt)
    turns = tuple(parse_chat(body.get("messages")))
    check_prompt_size(sum(len(p) for t in turns for p in t.parts if isinstance(p, str)), max_prompt_chars, "messages")
    check_image_limit(turns, image_limit)
    add_gen = bool(body.get("add_generation_prompt", True))
    if resolver is None:
        text_turns = [Turn(t.role, [p for p in t.parts if isinstance(p, str)]) for t in turns]
        return RenderedRequest(render_chat(text_turns, family, [], add_generation_prompt=add_gen), turns, (), salt)
    images = await resolve_images(resolver, image_parts(turns))
    prompt = render_chat(turns, family, [(im.hash, im.tokens) for im in images], add_generation_prompt=add_gen)
    return RenderedRequest(prompt, turns, images, salt)
