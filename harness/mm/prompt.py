"""Chat messages -> token ids with image placeholder ranges.

With a tokenizer that carries the model's chat template (``harness.mm.text``), the template is rendered as vLLM
renders it and each image's one placeholder token is expanded to its feature count, as vLLM's processor does.
Otherwise one Qwen-style template (``<|im_start|>role\\n ... <|im_end|>\\n``) for every family; only the image
placeholder differs per family. Rendering is split from image loading: ``parse_chat`` validates the request
and lists the image parts, the caller resolves them (possibly over the network), and ``render_chat`` builds
the prompt from the parsed turns and each image's placeholder count. The proxy and the engine both call these,
so their token ids and placeholder offsets agree exactly.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import PromptError
from harness.mm.families import Family
from harness.mm.text import STANDIN, TextTokenizer, bad_ids

log = logging.getLogger(__name__)

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


def _shown(value: Any) -> str:
    """A client's value as JSON in an error message, never a Python repr."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return type(value).__name__


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
        raise PromptError(f"content part type {_shown(kind)} is not supported by this model", f"{where}.type")
    raise PromptError(f"unknown content part type {_shown(kind)} (expected 'text' or 'image_url')", f"{where}.type")


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
            raise PromptError(f"{where}.role must be one of {sorted(ROLES)}, got {_shown(role)}", f"{where}.role")
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


def _pad_id(tok: TextTokenizer, family: Family) -> int:
    pad_id = tok.special_id(family.pad_token)
    if pad_id is None:
        raise ValueError(f"tokenizer {tok.source} has no {family.pad_token} token, the {family.name} image placeholder")
    return pad_id


def render_chat(
    turns: Sequence[Turn],
    family: Family,
    images: Sequence[tuple[str, int]],
    *,
    add_generation_prompt: bool = True,
    tokenizer: TextTokenizer | None = None,
) -> Prompt:
    """Token ids for ``turns``; ``images`` gives (hash, placeholder count) for each image part in order.

    ``tokenizer`` None is the stand-in. A tokenizer with a chat template whose image parts render the family's
    placeholder is rendered through that template; any other takes the built-in template."""
    tok = tokenizer or STANDIN
    if tok.chat_template is not None and template_renders_images(tok, family):
        return _render_with_template(tok, turns, family, images, add_generation_prompt)
    return _render_builtin(tok, turns, family, images, add_generation_prompt)


def _render_builtin(
    tok: TextTokenizer,
    turns: Sequence[Turn],
    family: Family,
    images: Sequence[tuple[str, int]],
    add_generation_prompt: bool,
) -> Prompt:
    ids: list[int] = []
    items: list[MMItem] = []
    pad_id = _pad_id(tok, family)
    pending: list[str] = []

    def flush() -> None:
        if pending:
            ids.extend(tok.encode("".join(pending)))
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


#: A template that loops over ``message['content']`` takes OpenAI-style part lists; any other takes strings
#: (vLLM's ``_detect_content_format`` in ``vllm/entrypoints/chat_utils.py`` reads the template's AST to decide).
_OPENAI_FORMAT_RE = re.compile(r"""for\s+\w+\s+in\s+(message|m|msg)(\[['"]content['"]\]|\.content)""")


def template_messages(turns: Sequence[Turn], template: str, family: Family) -> list[dict[str, Any]]:
    """Turns as vLLM hands them to a template: part lists with ``{"type": "image"}`` items ("openai" content
    format), or one string per message with the image placeholders first, joined by newlines ("string" format,
    ``_parse_chat_message_content_parts`` in ``vllm/entrypoints/chat_utils.py``)."""
    openai = bool(_OPENAI_FORMAT_RE.search(template))
    out: list[dict[str, Any]] = []
    for turn in turns:
        if openai:
            content: Any = [
                {"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in turn.parts
            ]
        else:
            placeholders = [family.pad_token for p in turn.parts if not isinstance(p, str)]
            content = "\n".join([*placeholders, *(p for p in turn.parts if isinstance(p, str))])
        out.append({"role": turn.role, "content": content})
    return out


_PROBES: dict[tuple[int, str], bool] = {}


def template_renders_images(tok: TextTokenizer, family: Family) -> bool:
    """Whether the template writes exactly one of the family's placeholders for one image part; decided once per
    tokenizer and family (a template that does not, e.g. Phi-3's ``<|image_1|>`` tags, takes the built-in one)."""
    key = (id(tok), family.name)
    known = _PROBES.get(key)
    if known is None:
        template = tok.chat_template or ""
        probe = [Turn("user", [ImagePart("probe"), "probe"])]
        try:
            text = tok.render_template(template_messages(probe, template, family), True)
            known = text.count(family.pad_token) == 1
        except Exception as exc:  # a template that cannot render our probe cannot render requests either
            log.warning("chat template of %s does not render (%s); using the built-in template", tok.source, exc)
            known = False
        if not known:
            log.warning(
                "chat template of %s does not write one %s per image; using the built-in template",
                tok.source,
                family.pad_token,
            )
        _PROBES[key] = known
    return known


def _render_with_template(
    tok: TextTokenizer,
    turns: Sequence[Turn],
    family: Family,
    images: Sequence[tuple[str, int]],
    add_generation_prompt: bool,
) -> Prompt:
    """The template's text, tokenized between the image placeholders (the placeholder is an added token, so the
    text on either side tokenizes the same alone as in the whole string), each placeholder expanded to its count."""
    template = tok.chat_template or ""
    try:
        text = tok.render_template(template_messages(turns, template, family), add_generation_prompt)
    except Exception as exc:  # jinja2.TemplateError, raise_exception(...) in the template
        raise PromptError(f"chat template error: {exc}", "messages") from None
    pieces = text.split(family.pad_token)
    if len(pieces) - 1 != len(images):
        raise PromptError(
            f"the rendered prompt holds {len(pieces) - 1} {family.pad_token} placeholders for {len(images)} images "
            f"(is the placeholder written in the text?)",
            "messages",
        )
    pad_id = _pad_id(tok, family)
    ids: list[int] = []
    items: list[MMItem] = []
    for i, piece in enumerate(pieces):
        if piece:
            ids.extend(tok.encode(piece))
        if i < len(images):
            mm_hash, count = images[i]
            items.append(MMItem(hash=mm_hash, offset=len(ids), length=count))
            ids.extend([pad_id] * count)
    return Prompt(token_ids=ids, mm_items=items)


def render_text(prompt: str | Sequence[int], tokenizer: TextTokenizer | None = None) -> Prompt:
    """A /v1/completions prompt: raw text (special tokens recognised) or token ids."""
    tok = tokenizer or STANDIN
    if isinstance(prompt, str):
        return Prompt(token_ids=tok.encode(prompt))
    ids = list(prompt)
    bad = bad_ids(tok, ids)
    if bad:  # a list, not next(..., None): a None id is itself bad
        raise PromptError(f"token id {json.dumps(bad[0], default=str)} is out of vocabulary", "prompt")
    return Prompt(token_ids=ids)


def completion_prompts(value: Any) -> list[str | list[int]]:
    """The prompts of a /v1/completions ``prompt``: text, token ids, or a batch of either (``CompletionRequest``
    in vLLM's ``vllm/entrypoints/openai/completion/protocol.py``: ``str | list[str] | list[int] |
    list[list[int]]``); vLLM's serving_completion schedules one request per prompt."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, list) and v for v in value):
            return list(value)
    raise PromptError(
        "prompt must be a string, a non-empty list of token ids, or a non-empty list of either (a batch)", "prompt"
    )


def completion_prompt(value: Any, tokenizer: TextTokenizer | None = None) -> Prompt:
    """The first prompt of a /v1/completions request (see ``completion_prompts``)."""
    return render_text(completion_prompts(value)[0], tokenizer)
