"""ImageResolver: hashes, placeholder counts and memoization across data URLs and mmfile:// references."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.mm import resolver as resolver_mod
from harness.mm.assets import AssetStore
from harness.mm.geometry import ImageGeometry, clear_cache, resolve_geometry
from harness.mm.images import ImageError, ImagePolicy, mm_hash
from harness.mm.prompt import ImagePart
from harness.mm.resolver import ImageResolver, ResolvedImage
from tests.helpers import MODEL, data_url, png_bytes

RED = png_bytes((255, 0, 0), (64, 48))
GREEN = png_bytes((0, 255, 0), (320, 200))
BLUE = png_bytes((0, 0, 255), (100, 100))


@pytest.fixture(scope="module")
def geometry() -> Iterator[ImageGeometry]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        clear_cache()
        yield resolve_geometry(MODEL)
        clear_cache()


class Analyzer:
    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, data: bytes) -> dict[str, int]:
        self.calls.append(data)
        return {"n": len(self.calls)}


def make(
    geometry: ImageGeometry, assets: AssetStore | None = None, memo_size: int = 4096
) -> tuple[ImageResolver, Analyzer]:
    analyzer = Analyzer()
    r = ImageResolver(MODEL, geometry, ImagePolicy(), assets=assets, analyze=analyzer, memo_size=memo_size)
    return r, analyzer


def resolve(r: ImageResolver, url: str, uuid: str | None = None) -> ResolvedImage:
    """What the engine does for an accepted request: resolve, then analyse; returns the memo's facts."""

    async def main() -> ResolvedImage:
        image = await r.resolve(ImagePart(url=url, uuid=uuid))
        await r.analysis(image)
        return ResolvedImage(image.hash, r._by_content.get(image.facts.content_hash) or image.facts, url)

    return asyncio.run(main())


def resolve_only(r: ImageResolver, url: str) -> ResolvedImage:
    return asyncio.run(r.resolve(ImagePart(url=url)))


def test_data_url_hash_and_facts(geometry: ImageGeometry) -> None:
    r, analyzer = make(geometry)
    got = resolve(r, data_url(GREEN))
    assert got.hash == mm_hash(MODEL, GREEN)
    assert got.facts.content_hash == got.hash
    assert (got.facts.width, got.facts.height) == (320, 200)
    assert got.tokens == got.facts.tokens == geometry.num_tokens(320, 200)
    assert got.tokens > 0
    assert got.facts.extra == {"n": 1}
    assert analyzer.calls == [GREEN]


def test_distinct_images_hash_and_count_differently(geometry: ImageGeometry) -> None:
    r, _ = make(geometry)
    red, green = resolve(r, data_url(RED)), resolve(r, data_url(GREEN))
    assert red.hash != green.hash
    assert red.tokens == geometry.num_tokens(64, 48)
    assert green.tokens == geometry.num_tokens(320, 200)


def test_data_url_and_mmfile_of_the_same_bytes_agree_and_analyze_once(geometry: ImageGeometry, tmp_path: Path) -> None:
    assets = AssetStore(tmp_path / "assets")
    ref = assets.put(BLUE)
    r, analyzer = make(geometry, assets)
    via_data = resolve(r, data_url(BLUE))
    via_ref = resolve(r, ref)
    assert via_ref.hash == via_data.hash == mm_hash(MODEL, BLUE)
    assert via_ref.facts is via_data.facts
    assert len(analyzer.calls) == 1
    # The reference's measurements were recorded as a derived artifact, so another process (a fresh resolver)
    # sharing the asset dir reuses them without decoding the image again...
    assert list(assets.derived.glob("*.facts.json"))
    r2, analyzer2 = make(geometry, assets)
    assert resolve(r2, ref).hash == resolve(r2, data_url(BLUE)).hash
    assert resolve(r2, ref).facts == via_data.facts
    assert analyzer2.calls == []
    # ...until a sweep evicts it: then the reference first, the data URL second, one analysis between them.
    assets.sweep(max_age_s=-1)
    r3, analyzer3 = make(geometry, assets)
    assert resolve(r3, ref).hash == resolve(r3, data_url(BLUE)).hash
    assert len(analyzer3.calls) == 1


def test_analyze_once_per_distinct_content(geometry: ImageGeometry, tmp_path: Path) -> None:
    assets = AssetStore(tmp_path / "assets")
    refs = {img: assets.put(img) for img in (RED, GREEN)}
    r, analyzer = make(geometry, assets)
    for _ in range(3):
        for img in (RED, GREEN, BLUE):
            resolve(r, data_url(img))
            resolve(r, data_url(img, mime="image/x-png"))  # other URL text, same bytes
        for ref in refs.values():
            resolve(r, ref)
            resolve(r, ref + ".png")
    assert sorted(analyzer.calls) == sorted([RED, GREEN, BLUE])


def test_repeated_data_url_skips_the_decode(geometry: ImageGeometry, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[str] = []
    real = resolver_mod.load_image_bytes

    async def counting(url: str, *args: Any) -> bytes:
        loads.append(url)
        return await real(url, *args)

    monkeypatch.setattr(resolver_mod, "load_image_bytes", counting)
    r, _ = make(geometry)
    url = data_url(RED)
    first = resolve(r, url)
    assert resolve(r, url).facts is first.facts
    assert resolve(r, url).hash == first.hash
    assert loads == [url]


def test_repeated_mmfile_ref_is_not_read_again(
    geometry: ImageGeometry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets = AssetStore(tmp_path / "assets")
    ref = assets.put(RED)
    r, _ = make(geometry, assets)
    first = resolve(r, ref)
    reads: list[str] = []
    real = assets.read_stamped
    monkeypatch.setattr(assets, "read_stamped", lambda *a: reads.append(a[0]) or real(*a))
    assert resolve(r, ref).hash == first.hash
    assert reads == []  # the source is unchanged (same stamp): the memo answers
    (assets.src / ref.removeprefix("mmfile://")).unlink()  # a memo never outlives its source
    for resolver in (r, make(geometry, assets)[0]):
        with pytest.raises(ImageError) as err:
            resolve(resolver, ref)
        assert err.value.status == 404


@pytest.mark.parametrize("fresh_process", [False, True])
def test_replaced_source_is_verified_again_not_vouched_for(
    geometry: ImageGeometry, tmp_path: Path, fresh_process: bool
) -> None:
    """A source swapped after its facts were written (memo or derived file): read, verified, refused (409)."""
    assets = AssetStore(tmp_path / "assets")
    ref = assets.put(RED)
    r, _ = make(geometry, assets)
    resolve(r, ref)
    assert list(assets.derived.glob("*.facts.json"))
    path = assets.src / ref.removeprefix("mmfile://")
    tmp = path.with_name("swap")
    tmp.write_bytes(GREEN)
    os.replace(tmp, path)
    resolver = make(geometry, assets)[0] if fresh_process else r
    with pytest.raises(ImageError) as err:
        resolve(resolver, ref)
    assert err.value.status == 409


def test_symlinked_asset_is_refused_even_with_derived_facts(geometry: ImageGeometry, tmp_path: Path) -> None:
    assets = AssetStore(tmp_path / "assets")
    ref = assets.put(RED)
    r, _ = make(geometry, assets)
    resolve(r, ref)
    path = assets.src / ref.removeprefix("mmfile://")
    real = path.with_name("real")
    os.replace(path, real)
    path.symlink_to(real)
    with pytest.raises(ImageError) as err:
        resolve(make(geometry, assets)[0], ref)
    assert err.value.status == 403


def test_resolve_never_analyses_and_analysis_runs_once(geometry: ImageGeometry) -> None:
    """Cheap facts first: ``resolve`` reads the header only; the decode waits for ``analysis``."""
    r, analyzer = make(geometry)
    image = resolve_only(r, data_url(GREEN))
    assert analyzer.calls == [] and image.facts.extra is None and image.data == GREEN
    assert asyncio.run(r.analysis(image)) == {"n": 1}
    again = resolve_only(r, data_url(GREEN))
    assert again.facts.extra == {"n": 1}  # the memo now carries the analysis
    assert asyncio.run(r.analysis(again)) == {"n": 1}
    assert len(analyzer.calls) == 1


def test_analysis_failure_is_a_400(geometry: ImageGeometry) -> None:
    def explode(data: bytes) -> None:
        raise SyntaxError("broken PNG chunk")

    r = ImageResolver(MODEL, geometry, ImagePolicy(), analyze=explode)
    image = resolve_only(r, data_url(RED))
    with pytest.raises(ImageError) as err:
        asyncio.run(r.analysis(image))
    assert err.value.status == 400


def test_uuid_overrides_hash_but_facts_are_shared(geometry: ImageGeometry) -> None:
    r, analyzer = make(geometry)
    url = data_url(GREEN)
    plain = resolve(r, url)
    tagged = resolve(r, url, uuid="my-image-1")
    other = resolve(r, url, uuid="my-image-2")
    assert tagged.hash == "my-image-1"
    assert other.hash == "my-image-2"
    assert plain.hash == mm_hash(MODEL, GREEN)
    assert tagged.facts is plain.facts is other.facts
    assert tagged.facts.content_hash == plain.hash
    assert len(analyzer.calls) == 1


def test_uuid_on_first_sight(geometry: ImageGeometry) -> None:
    r, _ = make(geometry)
    tagged = resolve(r, data_url(RED), uuid="u")
    assert tagged.hash == "u"
    assert tagged.facts.content_hash == mm_hash(MODEL, RED)
    assert resolve(r, data_url(RED)).hash == mm_hash(MODEL, RED)  # the uuid does not stick to the content


def test_mmfile_without_asset_store(geometry: ImageGeometry) -> None:
    r, analyzer = make(geometry)
    with pytest.raises(ImageError, match="asset directory") as err:
        resolve(r, "mmfile://" + "0" * 64)
    assert err.value.status == 400
    assert analyzer.calls == []


@pytest.mark.parametrize(("ref", "status"), [("mmfile://../../etc/passwd", 400), ("mmfile://" + "1" * 64, 404)])
def test_asset_errors_become_image_errors(geometry: ImageGeometry, tmp_path: Path, ref: str, status: int) -> None:
    r, _ = make(geometry, AssetStore(tmp_path / "assets").ensure())
    with pytest.raises(ImageError) as err:
        resolve(r, ref)
    assert err.value.status == status


def test_not_an_image(geometry: ImageGeometry) -> None:
    r, analyzer = make(geometry)
    with pytest.raises(ImageError):
        resolve(r, data_url(b"definitely not an image"))
    assert analyzer.calls == []


def test_memo_is_bounded(geometry: ImageGeometry) -> None:
    r, analyzer = make(geometry, memo_size=2)
    images = [png_bytes((i, i, i), (32, 32)) for i in range(5)]
    for img in images:
        resolve(r, data_url(img))
    assert len(analyzer.calls) == 5
    assert len(r._by_content) <= 2 and len(r._by_ref) <= 2
    resolve(r, data_url(images[-1]))  # still memoized
    assert len(analyzer.calls) == 5
    resolve(r, data_url(images[0]))  # evicted long ago: measured and analysed again
    assert len(analyzer.calls) == 6
    assert analyzer.calls[-1] == images[0]
