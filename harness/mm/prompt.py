"""Chat messages -> token ids with image placeholder ranges.

One Qwen-style template (``<|im_start|>role\\n ... <|im_end|>\\n``) for every family; only the image
placeholder differs per family. Rendering is split from image loading: ``parse_chat`` validates the request
and lists the image parts, the caller resolves them (possibly over the network), and ``render_chat`` builds
the prompt from the parsed turns and each image's placeholder count. The proxy and the engine both call these,
so their token ids and placeholder offsets agree exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import PromptError
from harness.mm import tokenizer
from harness.mm.families import Family

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
UNSUPPORTED_PARTS = frozenset({"image_embeds", "video_url", "input_audio", "audio_url", "file"})


@dataclass(frozen=True)
class ImagePart:
    url: str
    uuid: str | None = None


@dataclass
class Turn:
    role: str
    #: Text strings and ``ImagePart``s in order.
    parts: list[str | ImagePart] = field(default_factory=list)


@dataclass(frozen=True)
class MMItem:
    """One image in a prompt: its content hash and the run of pad tokens it occupies."""

    hash: str
    offset: int
    length: int


@dataclass
class Prompt:
    token_ids: list[int]
    mm_items: list[MMItem] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_image_tokens(self) -> int:
        return sum(item.length for item in self.mm_items)


def _parse_part(part: Any, where: str) -> str | ImagePart:
    if not isinstance(part, Mapping):
        raise PromptError(f"{where} must be an object with a 'type'", where)
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise PromptError(f"{where}.text must be a string", f"{where}.text")
        return text
    if kind == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
        if not isinstance(url, str) or not url:
            raise PromptError(f"{where}.image_url.url must be a non-empty string", f"{where}.image_url")
        uuid = part.get("uuid")
        if uuid is not None and not isinstance(uuid, str):
            raise PromptError(f"{where}.uuid must be a string", f"{where}.uuid")
        return ImagePart(url=url, uuid=uuid)
    if isinstance(kind, str) and kind in UNSUPPORTED_PARTS:
        raise PromptError(f"content part type {kind!r} is not supported by this model", f"{where}.type")
    raise PromptError(f"unknown content part type {kind!r} (expected 'text' or 'image_url')", f"{where}.type")


def parse_chat(messages: Any) -> list[Turn]:
    """Validate OpenAI chat messages into turns; raises ``PromptError`` naming the field."""
    if not isinstance(messages, list) or not messages:
        raise PromptError("messages must be a non-empty list", "messages")
    turns = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise PromptError(f"{where} must be an object", where)
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise PromptError(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}", f"{where}.role")
        content = msg.get("content")
        turn = Turn(role=role)
        if isinstance(content, str):
            turn.parts.append(content)
        elif isinstance(content, list):
            turn.parts.extend(_parse_part(p, f"{where}.content[{j}]") for j, p in enumerate(content))
        elif content is not None:
            raise PromptError(f"{where}.content must be a string or a list of parts", f"{where}.content")
        turns.append(turn)
    return turns


def image_parts(turns: Sequence[Turn]) -> list[ImagePart]:
    return [p for t in turns for p in t.parts if isinstance(p, ImagePart)]


def render_chat(
    turns: Sequence[Turn],
    family: Family,
    images: Sequence[tuple[str, int]],
    *,
    add_generation_prompt: bool = True,
) -> Prompt:
    """Token ids for ``turns``; ``images`` gives (hash, placeholder count) for each image part in order."""
    ids: list[int] = []
    items: list[MMItem] = []
    pad_id = tokenizer.SPECIAL_IDS[family.pad_token]
    pending: list[str] = []

    def flush() -> None:
        if pending:
            ids.extend(tokenizer.encode("".join(pending)))
            pending.clear()

    if family.default_system is not None and (not turns or turns[0].role != "system"):
        pending.append(f"<|im_start|>system\n{family.default_system}<|im_end|>\n")
    image_iter = iter(images)
    for turn in turns:
        pending.append(f"<|im_start|>{turn.role}\n")
        for part in turn.parts:
            if isinstance(part, str):
                pending.append(part)
                continue
            try:
                mm_hash, count = next(image_iter)
            except StopIteration:
                raise ValueError("fewer images than image parts") from None
            pending.append(family.prefix)
            flush()
            items.append(MMItem(hash=mm_hash, offset=len(ids), length=count))
            ids.extend([pad_id] * count)
            pending.append(family.suffix)
        pending.append("<|im_end|>\n")
    if add_generation_prompt:
        pending.append("<|im_start|>assistant\n")
    flush()
    return Prompt(token_ids=ids, mm_items=items)


def render_text(prompt: str | Sequence[int]) -> Prompt:
    """A /v1/completions prompt: raw text (special tokens recognised) or token ids."""
    if isinstance(prompt, str):
        return Prompt(token_ids=tokenizer.encode(prompt))
    ids = list(prompt)
    bad = [t for t in ids if not isinstance(t, int) or not tokenizer.is_valid_id(t)]
    if bad:  # a list, not next(..., None): a None id is itself bad
        raise PromptError(f"token id {bad[0]!r} is out of vocabulary", "prompt")
    return Prompt(token_ids=ids)


def completion_prompt(value: Any) -> Prompt:
    """The ``prompt`` of a /v1/completions request: text, token ids, or a one-element batch of either."""
    if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
        if len(value) > 1:
            raise PromptError(
                f"batched prompts ({len(value)} in one request) are not supported; send one per request", "prompt"
            )
        value = value[0]
    if not isinstance(value, (str, list)) or (isinstance(value, list) and not value):
        raise PromptError("prompt must be a string or a non-empty list of token ids (one prompt per request)", "prompt")
    return render_text(value)
