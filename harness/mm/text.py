"""The text tokenizer the engine and the proxy share: the model's own when one can be found, else the stand-in.

Token counts drive everything a router is judged on (prefill time, KV capacity, eviction, hit rates,
``max_model_len`` refusals), so a worker and its proxy tokenize with the model's ``tokenizer.json`` (the
``tokenizers`` library, as vLLM's fast tokenizers do) and render chats with the model's chat template (jinja2,
as ``transformers``' ``apply_chat_template`` does) when they can find them. The lookup follows the geometry's
(``harness.mm.geometry``): an explicit ``--tokenizer`` (a directory, a ``tokenizer.json`` or a hub id), the model
as a local directory, the local Hugging Face cache, the hub unless offline. When nothing is found the
deterministic stand-in (``harness.mm.tokenizer``) serves and the start-up line says so: its counts are about 1.9x
Qwen's for English prose and 0.67x for digits.

Both implement ``TextTokenizer``. The real one memoizes per text piece between special tokens: the ``tokenizers``
library splits a string at added tokens before anything else (``AddedVocabulary.split_with_indices``), so a piece's
ids do not depend on its neighbours, and the template's fixed pieces, a repeated system prompt or the earlier turns
of a conversation are tokenized once.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from harness.mm import tokenizer as standin

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: Where a processor's chat template lives (``transformers`` saves it beside the tokenizer since 4.43; vLLM's
#: ``resolve_hf_chat_template`` in ``vllm/entrypoints/chat_utils.py`` prefers the processor's template to the
#: tokenizer's, so these are read before ``tokenizer_config.json``'s ``chat_template``).
PROCESSOR_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
#: Pieces longer than this are tokenized every time (long user texts rarely repeat exactly).
MEMO_MAX_CHARS = 4096
MEMO_SIZE = 8192


class TextTokenizer(Protocol):
    """What rendering, sampling and the tokenize endpoints need from a tokenizer."""

    #: Where it came from, for the start-up line: ``standin``, ``file:...``, ``local:...``, ``hf-cache:...``.
    source: str
    eos_token_id: int
    #: No token covers more characters than this: a text of n characters has at least n / this many tokens.
    max_chars_per_token: int
    #: Jinja chat template (``None``: the harness's built-in Qwen-style template).
    chat_template: str | None

    @property
    def is_standin(self) -> bool: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def is_valid_id(self, tid: int) -> bool: ...

    def special_id(self, token: str) -> int | None: ...

    def render_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str: ...


class StandInTokenizer:
    """``harness.mm.tokenizer`` behind the protocol: exact, reversible, no files, not the model's counts."""

    source = "standin"
    eos_token_id = standin.EOS_TOKEN_ID
    max_chars_per_token = standin.MAX_CHUNK_BYTES
    chat_template: str | None = None

    @property
    def is_standin(self) -> bool:
        return True

    def encode(self, text: str) -> list[int]:
        return standin.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return standin.decode(ids)

    def is_valid_id(self, tid: int) -> bool:
        return standin.is_valid_id(tid)

    def special_id(self, token: str) -> int | None:
        return standin.SPECIAL_IDS.get(token)

    def render_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        raise NotImplementedError("the stand-in has no chat template")


STANDIN = StandInTokenizer()


class _LRU(OrderedDict[str, tuple[int, ...]]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def lookup(self, key: str) -> tuple[int, ...] | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: str, value: tuple[int, ...]) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


def _token_text(value: Any) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or an ``AddedToken`` object."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` with its config's special tokens and chat template."""

    def __init__(self, tok: Any, config: Mapping[str, Any], chat_template: str | None, source: str) -> None:
        self.tok = tok
        self.config = config
        self.chat_template = chat_template
        self.source = source
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        added = tok.get_added_tokens_decoder()  # id -> AddedToken
        self.added: dict[str, int] = {t.content: i for i, t in added.items()}
        vocab = tok.get_vocab(with_added_tokens=True)
        longest = max((len(t) for t in vocab), default=1)
        # A normalizer may compose characters (NFC/NFKC): leave room for a token covering more input than its text.
        self.max_chars_per_token = longest * (4 if tok.normalizer is not None else 1)
        eos_text = _token_text(config.get("eos_token"))
        eos = self.special_id(eos_text) if eos_text else None
        for fallback in ("<|im_end|>", "<|endoftext|>", "</s>"):
            if eos is None:
                eos = self.special_id(fallback)
        if eos is None:
            raise ValueError(f"tokenizer {source}: no EOS token (eos_token in {TOKENIZER_CONFIG_FILE})")
        self.eos_token_id = int(eos)
        # Pieces between added tokens tokenize independently only when no added token eats its neighbours'
        # whitespace (lstrip/rstrip) or depends on them (single_word): otherwise encode whole strings.
        self._splittable = bool(self.added) and not any(
            t.lstrip or t.rstrip or t.single_word for t in added.values()
        )
        self._split_re = (
            re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")")
            if self._splittable
            else None
        )
        self._memo = _LRU(MEMO_SIZE)
        self._template: Any = None
        # encode_batch_fast (tokenizers >= 0.21) skips the offsets nobody here reads: ~25% less per call.
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)

    @property
    def is_standin(self) -> bool:
        return False

    def special_id(self, token: str) -> int | None:
        tid = self.added.get(token)
        if tid is None:
            tid = self.tok.token_to_id(token)
        return None if tid is None else int(tid)

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without added BOS/EOS (a rendered chat prompt carries its own, as vLLM tokenizes it
        with ``add_special_tokens=False``); special tokens written in the text are recognised."""
        if self._split_re is None:
            return list(self.tok.encode(text, add_special_tokens=False).ids)
        parts = self._split_re.split(text)
        ids: list[int] = []
        missing: list[str] = []
        for i, part in enumerate(parts):
            if i % 2 == 0 and part and len(part) <= MEMO_MAX_CHARS and self._memo.lookup(part) is None:
                missing.append(part)
        if missing:
            unique = list(dict.fromkeys(missing))
            for part, enc in zip(unique, self._encode_batch(unique, add_special_tokens=False), strict=True):
                self._memo.put(part, tuple(enc.ids))
        for i, part in enumerate(parts):
            if not part:
                continue
            if i % 2:
                ids.append(self.added[part])
            elif len(part) <= MEMO_MAX_CHARS:
                cached = self._memo.lookup(part)
                ids.extend(cached if cached is not None else self.tok.encode(part, add_special_tokens=False).ids)
            else:
                ids.extend(self.tok.encode(part, add_special_tokens=False).ids)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=False))

    def is_valid_id(self, tid: int) -> bool:
        return 0 <= tid < self.vocab_size

    def render_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        """``apply_chat_template(tokenize=False)``: transformers' sandboxed jinja environment and variables
        (``transformers/utils/chat_template_utils.py``: trim_blocks, lstrip_blocks, loopcontrols, ``raise_exception``,
        the special tokens by name)."""
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if self._template is None:
            self._template = compile_template(self.chat_template)
        specials = {
            k: _token_text(v)
            for k, v in self.config.items()
            if k.endswith("_token") and _token_text(v) is not None
        }
        return str(self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **specials))


def compile_template(source: str) -> Any:
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


# -- lookup ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerFiles:
    tokenizer_json: str
    config: dict[str, Any]
    chat_template: str | None
    source: str


def _read_template(path: str) -> str | None:
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        value = json.loads(text).get("chat_template")
        return value if isinstance(value, str) else None
    return text


def _config_template(config: Mapping[str, Any]) -> str | None:
    value = config.get("chat_template")
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # named templates: transformers uses "default"
        for item in value:
            if isinstance(item, Mapping) and item.get("name") == "default" and isinstance(item.get("template"), str):
                return str(item["template"])
    return None


def _files_in(directory: Path, source: str) -> TokenizerFiles | None:
    tj = directory / TOKENIZER_FILE
    if not tj.is_file():
        return None
    cfg_path = directory / TOKENIZER_CONFIG_FILE
    config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    template = None
    for name in PROCESSOR_TEMPLATE_FILES:
        if (directory / name).is_file():
            template = _read_template(str(directory / name))
            if template:
                break
    return TokenizerFiles(str(tj), config, template or _config_template(config), source)


def find_tokenizer_files(model: str, tokenizer: str | None, tried: list[str]) -> TokenizerFiles | None:
    """The first of: ``--tokenizer`` (directory, file or hub id), the model directory, the HF cache, the hub."""
    from harness.mm.geometry import find_model_file

    for name, label in ((tokenizer, "--tokenizer"), (model, "model")) if tokenizer else ((model, "model"),):
        assert name is not None
        path = Path(name)
        if path.is_file() and path.name == TOKENIZER_FILE:
            path = path.parent
        tried.append(f"{label} directory {path}")
        if path.is_dir():
            found = _files_in(path, f"local:{path}")
            if found is not None:
                return found
            continue
        if label == "--tokenizer" and (path.is_absolute() or name.startswith(".")):
            break  # a path that does not exist (not a hub id either): an explicit tokenizer is never replaced
        hit = find_model_file(name, TOKENIZER_FILE, None, tried, check_local=False)
        if hit is not None:
            directory = Path(hit[0]).parent
            # The cache or a download holds the sibling files in the same snapshot directory; fetch those too.
            for extra in (TOKENIZER_CONFIG_FILE, *PROCESSOR_TEMPLATE_FILES):
                if not (directory / extra).is_file():
                    find_model_file(name, extra, None, [], check_local=False)
            found = _files_in(directory, hit[1])
            if found is not None:
                return found
        if label == "--tokenizer":
            break  # an explicit tokenizer that is not found must not silently become the model's
    return None


def load_tokenizer(model: str, tokenizer: str | None = None) -> TextTokenizer:
    """The model's tokenizer if its files are found, else the stand-in; logs one line naming which."""
    return _load(model, tokenizer)


@lru_cache(maxsize=16)
def _load(model: str, tokenizer: str | None) -> TextTokenizer:
    tried: list[str] = []
    files = find_tokenizer_files(model, tokenizer, tried)
    if files is None:
        if tokenizer:
            raise ValueError(f"--tokenizer {tokenizer}: no {TOKENIZER_FILE} found (tried {'; '.join(tried)})")
        log.info(
            "tokenizer for %s: the harness stand-in (no %s found: tried %s); token counts are not the model's",
            model,
            TOKENIZER_FILE,
            "; ".join(tried),
        )
        return STANDIN
    from tokenizers import Tokenizer

    tok = HFTokenizer(Tokenizer.from_file(files.tokenizer_json), files.config, files.chat_template, files.source)
    log.info(
        "tokenizer for %s: %s (%d ids, chat template: %s)",
        model,
        files.source,
        tok.vocab_size,
        "the model's" if files.chat_template else "none, the harness's built-in",
    )
    return tok


def clear_cache() -> None:
    _load.cache_clear()


def bad_ids(tok: TextTokenizer, ids: Sequence[Any]) -> list[Any]:
    """The ids that are not in-vocabulary integers (a list: a ``None`` id is itself bad)."""
    return [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not tok.is_valid_id(t)]
