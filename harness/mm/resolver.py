"""Image parts -> (hash, placeholder count): the one path both the proxy and the engine take.

Work is memoized at two levels. Content that has been seen before (by its hash) is never measured or analysed
again, and a reference whose bytes cannot change — a ``data:`` URL, keyed by a blake3 of the URL text, or a
content-addressed ``mmfile://`` reference — skips even the base64 decode. http(s) URLs are fetched every time
(their content may change) but their measurements are reused. No decoded pixels are kept: only hashes, sizes
and whatever small result ``analyze`` returns.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import blake3

from harness.mm.assets import SCHEME as ASSET_SCHEME
from harness.mm.assets import AssetError, AssetStore
from harness.mm.geometry import ImageGeometry
from harness.mm.images import ImageError, ImagePolicy, image_size, load_image_bytes, mm_hash
from harness.mm.prompt import ImagePart


@dataclass(frozen=True)
class ImageFacts:
    content_hash: str
    width: int
    height: int
    tokens: int
    extra: Any = None


@dataclass(frozen=True)
class ResolvedImage:
    #: What enters the block keys: the part's ``uuid`` when given, else the content hash.
    hash: str
    facts: ImageFacts

    @property
    def tokens(self) -> int:
        return self.facts.tokens


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_touch(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class ImageResolver:
    def __init__(
        self,
        model: str,
        geometry: ImageGeometry,
        policy: ImagePolicy,
        *,
        assets: AssetStore | None = None,
        analyze: Callable[[bytes], Any] | None = None,
        memo_size: int = 4096,
    ) -> None:
        self.model = model
        self.geometry = geometry
        self.policy = policy
        self.assets = assets
        self.analyze = analyze
        self.session: aiohttp.ClientSession | None = None
        self._by_content = _LRU(memo_size)
        self._by_ref = _LRU(memo_size)
        # Derived facts depend on the model (hash seed) and its geometry (token counts).
        self._model_tag = blake3.blake3(f"{model}|{sorted(geometry.config.items())}".encode()).hexdigest()[:16]

    async def _bytes(self, url: str) -> bytes:
        if url.startswith(ASSET_SCHEME):
            if self.assets is None:
                raise ImageError("mmfile:// references need an asset directory (--asset-dir)", status=400)
            return self.assets.read(url, self.policy.max_bytes)  # AssetError is an ImageError
        return await load_image_bytes(url, self.policy, self.session)

    def _measure(self, data: bytes, content_hash: str) -> ImageFacts:
        width, height, _ = image_size(data, self.policy.max_pixels)
        tokens = self.geometry.num_tokens(width, height)  # ImageGeometryError is an ImageError
        extra = None
        if self.analyze is not None:
            try:
                extra = self.analyze(data)
            except OSError as exc:
                raise ImageError(f"cannot decode image: {exc}") from None
        return ImageFacts(content_hash, width, height, tokens, extra)

    # -- derived artifacts: measurements of asset-dir images, shared by every process using the dir ---------
    def _derived_path(self, url: str) -> Path | None:
        if self.assets is None or not url.startswith(ASSET_SCHEME):
            return None
        try:
            digest = self.assets.path_of(url).name
        except AssetError:
            return None
        return self.assets.derived_path(f"{digest}.{self._model_tag}.facts.json")

    def _load_derived(self, path: Path) -> ImageFacts | None:
        try:
            raw = json.loads(path.read_text())
            extra = raw.get("extra")
            return ImageFacts(
                raw["content_hash"],
                int(raw["width"]),
                int(raw["height"]),
                int(raw["tokens"]),
                tuple(extra) if isinstance(extra, list) else extra,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _store_derived(self, path: Path, facts: ImageFacts) -> None:
        try:
            payload = json.dumps(dataclasses.asdict(facts))
        except TypeError:  # an analysis result that is not JSON: keep it in memory only
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(payload)
        os.replace(tmp, path)

    async def resolve(self, part: ImagePart) -> ResolvedImage:
        url = part.url
        ref_key: str | None = None
        if url.startswith("data:"):
            ref_key = blake3.blake3(url.encode()).hexdigest()
        elif url.startswith(ASSET_SCHEME):
            ref_key = url
        if ref_key is not None:
            content_hash = self._by_ref.get_touch(ref_key)
            if content_hash is not None:
                facts = self._by_content.get_touch(content_hash)
                if facts is not None:
                    return ResolvedImage(part.uuid or content_hash, facts)
        derived = self._derived_path(url)
        if derived is not None and derived.exists() and self.assets is not None:
            if not self.assets.path_of(url).exists():  # derived facts never outlive their source
                raise ImageError(f"asset {url} not found in {self.assets.src}", status=404)
            facts = self._load_derived(derived)
            # A process that analyses images cannot use facts written by one that does not.
            if facts is not None and (self.analyze is None or facts.extra is not None):
                self._by_content.put(facts.content_hash, facts)
                self._by_ref.put(url, facts.content_hash)
                return ResolvedImage(part.uuid or facts.content_hash, facts)
        data = await self._bytes(url)
        content_hash = mm_hash(self.model, data)
        facts = self._by_content.get_touch(content_hash)
        if facts is None:
            facts = self._measure(data, content_hash)
            self._by_content.put(content_hash, facts)
        if derived is not None:
            self._store_derived(derived, facts)
        if ref_key is not None:
            self._by_ref.put(ref_key, content_hash)
        return ResolvedImage(part.uuid or content_hash, facts)
