"""The multimodal command-line options the simulated worker and the proxy share, and what they build.

A router that expands images differently from its workers routes on the wrong keys (the bug class of Dynamo's
PR #9441), so both processes read the *same* flags (named as ``vllm serve`` names them) into one ``MMOptions``
and build geometry, image policy, asset store and resolver from it with the same code.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.mm.assets import AssetStore
from harness.mm.geometry import ImageGeometry, resolve_geometry
from harness.mm.images import DEFAULT_FETCH_TIMEOUT_S, DEFAULT_MAX_IMAGE_BYTES, ImagePolicy
from harness.mm.resolver import ImageResolver
from harness.mm.text import TextTokenizer, load_tokenizer

#: vLLM's default ``--limit-mm-per-prompt`` for images in the harness's stacks.
DEFAULT_IMAGE_LIMIT = 16
#: Text beyond this many characters is refused before tokenizing (a 256K-token context at 4 characters a token;
#: the simulated worker lowers it to what its max_model_len can hold).
DEFAULT_MAX_PROMPT_CHARS = 1 << 20


@dataclass(frozen=True)
class MMOptions:
    mm_family: str | None = None
    preprocessor_config: str | None = None
    mm_processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    limit_mm_per_prompt: Mapping[str, int] = field(default_factory=lambda: {"image": DEFAULT_IMAGE_LIMIT})
    #: No http(s) image host by default; launch scripts name the harness's image server as a host:port pair.
    allowed_media_hosts: tuple[str, ...] = ()
    allowed_local_media_path: Path | None = None
    asset_dir: Path | None = None
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    media_fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_S
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    #: A tokenizer directory, ``tokenizer.json`` or hub id (vLLM's ``--tokenizer``); None: the model's own.
    tokenizer: str | None = None

    def text_tokenizer(self, model: str) -> TextTokenizer:
        """The model's tokenizer (``harness.mm.text``: --tokenizer, model dir, HF cache, hub), else the stand-in."""
        return load_tokenizer(model, self.tokenizer)

    @property
    def image_limit(self) -> int:
        return int(self.limit_mm_per_prompt.get("image", DEFAULT_IMAGE_LIMIT))

    def geometry(self, model: str) -> ImageGeometry:
        """The model's image geometry: explicit family/config/kwargs first, then what the model id says."""
        return resolve_geometry(
            model,
            family=self.mm_family,
            preprocessor_config=self.preprocessor_config,
            overrides=dict(self.mm_processor_kwargs),
        )

    def image_policy(self) -> ImagePolicy:
        return ImagePolicy(
            allowed_hosts=self.allowed_media_hosts,
            allowed_local_path=self.allowed_local_media_path,
            max_bytes=self.max_image_bytes,
            fetch_timeout_s=self.media_fetch_timeout,
        )

    def asset_store(self) -> AssetStore | None:
        return AssetStore(self.asset_dir) if self.asset_dir else None

    def resolver(
        self,
        model: str,
        geometry: ImageGeometry,
        *,
        assets: AssetStore | None = None,
        analyze: Callable[[bytes], Any] | None = None,
    ) -> ImageResolver:
        return ImageResolver(model, geometry, self.image_policy(), assets=assets, analyze=analyze)


def json_object(flag: str) -> Callable[[str], dict[str, Any]]:
    """An argparse ``type`` that accepts a JSON object and names ``flag`` when it gets anything else."""

    def parse(text: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError(f"{flag} must be a JSON object")
        return value

    return parse


def add_mm_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``multimodal`` argument group, identical for worker and proxy."""
    d = MMOptions()
    m = parser.add_argument_group("multimodal")
    m.add_argument("--mm-family", default=None, help="model family, when the model id does not say")
    m.add_argument("--preprocessor-config", default=None, help="path of a preprocessor_config.json")
    m.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer directory, tokenizer.json or hub id (default: the model's, found like the image geometry; "
        "the harness's stand-in when none is found)",
    )
    m.add_argument("--mm-processor-kwargs", type=json_object("--mm-processor-kwargs"), default={})
    m.add_argument(
        "--limit-mm-per-prompt",
        type=json_object("--limit-mm-per-prompt"),
        default=dict(d.limit_mm_per_prompt),
    )
    m.add_argument(
        "--allowed-media-hosts",
        nargs="+",
        default=list(d.allowed_media_hosts),
        help="where http(s) image URLs may point: host:port pairs ([v6]:port), bare hosts (any port), 'loopback' "
        "(every port of localhost, 127/8 and ::1) or '*'; none by default",
    )
    m.add_argument("--allowed-local-media-path", type=Path, default=None)
    m.add_argument("--asset-dir", type=Path, default=None, help="run-scoped asset directory for mmfile:// refs")
    m.add_argument("--max-image-bytes", type=int, default=d.max_image_bytes)
    m.add_argument("--media-fetch-timeout", type=float, default=d.media_fetch_timeout)
    m.add_argument(
        "--max-prompt-chars",
        type=int,
        default=d.max_prompt_chars,
        help="refuse prompts with more text characters than this before tokenizing",
    )


def pop_mm_options(values: dict[str, Any]) -> MMOptions:
    """Take the multimodal options out of parsed ``vars(namespace)``, leaving the rest for the caller."""
    taken = {f.name: values.pop(f.name) for f in fields(MMOptions) if f.name in values}
    if "allowed_media_hosts" in taken:
        taken["allowed_media_hosts"] = tuple(taken["allowed_media_hosts"])
    return MMOptions(**taken)
