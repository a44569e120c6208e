"""Image parts -> (hash, placeholder count): the one path both the proxy and the engine take.

Work is memoized at two levels. Content that has been seen before (by its hash) is never measured or analysed
again, and a reference whose bytes cannot change — a ``data:`` URL, keyed by a blake3 of the URL text, or a
content-addressed ``mmfile://`` reference — skips even the base64 decode. http(s) URLs are fetched every time
(their content may change) but their measurements are reused. No decoded pixels are kept: only hashes, sizes
and whatever small result ``analyze`` returns. An ``mmfile://`` memo entry (in memory or a derived facts file)
is trusted only while the source file's identity (``assets.Stamp``) is unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import blake3

from harness.mm.assets import SCHEME as ASSET_SCHEME
from harness.mm.assets import AssetError, AssetStore, Stamp
from harness.mm.geometry import ImageGeometry
from harness.mm.images import ImageError, ImagePolicy, image_size, load_image_bytes, mm_hash
from harness.mm.prompt import ImagePart

T = TypeVar("T")


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
    #: The URL it came from and, when this request read them, the encoded bytes (for a later ``analysis``).
    url: str = field(default="", compare=False)
    data: bytes | None = field(default=None, repr=False, compare=False)

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


#: Image work (base64, hashing, header parsing, analysis) runs on this many threads per resolver: off the event
#: loop, and bounded, so a burst of large images queues instead of holding many decodes in memory at once.
IMAGE_THREADS = 2
#: Payloads up to this size are hashed and measured on the event loop (a thread hop costs more than the work).
_INLINE_BYTES = 256 * 1024


class ImageResolver:
    """Image part -> (hash, token count), cheapest facts first; the analysis (a pixel decode) only on request.

    ``resolve`` reads what routing and length checks need — bytes, hash, size from the header, placeholder
    count — and never decodes pixels, so a request that is over the length limit is refused before any decode.
    ``analysis`` (the engine's colour naming) runs after the caller has accepted the request, on the bounded
    image threads, once per distinct content.
    """

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
        #: data-URL digest -> content hash; mmfile ref -> (content hash, source stamp).
        self._by_ref = _LRU(memo_size)
        self._executor: ThreadPoolExecutor | None = None
        # Derived facts depend on the model (hash seed) and its geometry (token counts).
        self._model_tag = blake3.blake3(f"{model}|{sorted(geometry.config.items())}".encode()).hexdigest()[:16]

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(IMAGE_THREADS, thread_name_prefix="images")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _bytes(self, url: str) -> tuple[bytes, Stamp | None]:
        if url.startswith(ASSET_SCHEME):
            if self.assets is None:
                raise ImageError("mmfile:// references need an asset directory (--asset-dir)", status=400)
            # AssetError is an ImageError; read in a thread: a cold page cache makes this disk I/O.
            return await self._run(self.assets.read_stamped, url, self.policy.max_bytes)
        return await load_image_bytes(url, self.policy, self.session), None

    def _measure(self, data: bytes) -> ImageFacts:
        """Hash and header facts, no pixel decode (``image_size`` reads the header only)."""
        content_hash = mm_hash(self.model, data)
        facts = self._by_content.get(content_hash)
        if facts is not None:
            return facts
        width, height, _ = image_size(data, self.policy.max_pixels)
        tokens = self.geometry.num_tokens(width, height)  # ImageGeometryError is an ImageError
        return ImageFacts(content_hash, width, height, tokens, None)

    # -- derived artifacts: measurements of asset-dir images, shared by every process using the dir ---------
    def _derived_path(self, url: str) -> Path | None:
        if self.assets is None or not url.startswith(ASSET_SCHEME):
            return None
        try:
            digest = self.assets.path_of(url).name
        except AssetError:
            return None
        return self.assets.derived_path(f"{digest}.{self._model_tag}.facts.json")

    def _load_derived(self, path: Path, stamp: Stamp) -> ImageFacts | None:
        """Facts written for exactly this source file (its stamp), else None: a replaced source is re-read."""
        try:
            raw = json.loads(path.read_text())
            if [int(x) for x in raw["source_stamp"]] != list(stamp):
                return None
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

    def _store_derived(self, path: Path, facts: ImageFacts, stamp: Stamp) -> None:
        try:
            payload = json.dumps({**dataclasses.asdict(facts), "source_stamp": list(stamp)})
        except TypeError:  # an analysis result that is not JSON: keep it in memory only
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(payload)
            os.replace(tmp, path)
        except OSError:  # a read-only or vanished asset dir costs a re-measure, never the request
            return

    def _memo(self, facts: ImageFacts) -> ImageFacts:
        """One facts object per content: keep the memo's when it already carries an analysis."""
        known = self._by_content.get_touch(facts.content_hash)
        if known is not None and (known.extra is not None or facts.extra is None):
            return known
        self._by_content.put(facts.content_hash, facts)
        return facts

    async def resolve(self, part: ImagePart) -> ResolvedImage:
        url = part.url
        ref_key: str | None = None
        stamp: Stamp | None = None
        if url.startswith("data:"):
            ref_key = blake3.blake3(url.encode()).hexdigest()
            content_hash = self._by_ref.get_touch(ref_key)
        elif url.startswith(ASSET_SCHEME) and self.assets is not None:
            ref_key = url
            stamp = self.assets.stamp(url)  # one lstat: 404 / 403 (symlink, FIFO) before anything is trusted
            known = self._by_ref.get_touch(ref_key)
            content_hash = known[0] if known is not None and known[1] == stamp else None
        else:
            content_hash = None
        if content_hash is not None:
            facts = self._by_content.get_touch(content_hash)
            if facts is not None:
                return ResolvedImage(part.uuid or content_hash, facts, url)
        derived = self._derived_path(url)
        if derived is not None and stamp is not None:
            loaded = self._load_derived(derived, stamp)
            if loaded is not None:
                facts = self._memo(loaded)
                self._by_ref.put(url, (facts.content_hash, stamp))
                return ResolvedImage(part.uuid or facts.content_hash, facts, url)
        data, read_stamp = await self._bytes(url)
        facts = self._measure(data) if len(data) <= _INLINE_BYTES else await self._run(self._measure, data)
        facts = self._memo(facts)
        if derived is not None and read_stamp is not None:
            self._store_derived(derived, facts, read_stamp)
            self._by_ref.put(url, (facts.content_hash, read_stamp))
        elif ref_key is not None:
            self._by_ref.put(ref_key, facts.content_hash)
        return ResolvedImage(part.uuid or facts.content_hash, facts, url, data)

    async def analysis(self, image: ResolvedImage) -> Any:
        """``analyze`` of the image's bytes, once per distinct content, off the event loop.

        The bytes are the ones ``resolve`` read for this request; an image answered from the memo is read
        again (and must still hash to the same content). Any failure to decode is the client's bad image.
        """
        if self.analyze is None:
            return None
        content_hash = image.facts.content_hash
        facts = self._by_content.get_touch(content_hash) or image.facts
        if facts.extra is not None:
            return facts.extra
        data = image.data
        if data is None:
            data, _ = await self._bytes(image.url)
            if mm_hash(self.model, data) != content_hash:
                raise ImageError(f"image {image.url[:80]} changed while the request was being handled", 409)
        try:
            extra = await self._run(self.analyze, data)
        except ImageError:
            raise
        except Exception as exc:  # Pillow's decoders raise far more than OSError
            raise ImageError(f"cannot decode image ({type(exc).__name__})") from None
        facts = self._memo(dataclasses.replace(facts, extra=extra))
        derived = self._derived_path(image.url)
        if derived is not None and self.assets is not None:
            try:
                stamp = self.assets.stamp(image.url)
            except AssetError:
                return extra
            self._store_derived(derived, facts, stamp)
        return extra
