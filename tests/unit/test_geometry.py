"""Resolving a model's image geometry: the fallback chain, memoization, family inference, config keys.

The network is never touched: HF_HUB_OFFLINE=1 is set for every test, and the few tests that exercise the hub
step replace ``huggingface_hub.hf_hub_download`` with a local fake.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from harness.mm import geometry
from harness.mm.geometry import CONFIG_FILE, OVERRIDE_FLAGS, GeometryNotFoundError, clear_cache, resolve_geometry

QWEN25_HUB_FILE = {
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}


@pytest.fixture(autouse=True)
def _offline_and_clean(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Offline, no memo carried between tests, and a cwd where no model id names a local directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail loudly if anything tries a hub download; returns the list of attempted repo ids (must stay empty)."""
    calls: list[str] = []

    def forbidden(*args: Any, **kwargs: Any) -> str:
        calls.append(kwargs.get("repo_id", args[0] if args else "?"))
        raise AssertionError("hf_hub_download must not be called")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    return calls


@pytest.fixture
def empty_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty HF cache dir so the developer's real cache never leaks into a test."""
    return str(tmp_path_factory.mktemp("empty-hf-cache"))


def neutral_dir(factory: pytest.TempPathFactory, config: dict[str, Any] | None) -> Path:
    """A model directory whose path matches no family pattern (pytest's tmp_path embeds the test name)."""
    d = factory.mktemp("m")
    if config is not None:
        (d / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return d


def make_hf_cache(root: Path, repo_id: str, config: dict[str, Any], commit: str = "a" * 40) -> Path:
    """The real hub cache layout: blobs/<sha>, snapshots/<commit>/<file> -> blob symlink, refs/main."""
    repo_dir = root / ("models--" + repo_id.replace("/", "--"))
    body = json.dumps(config).encode()
    blob = repo_dir / "blobs" / hashlib.sha256(body).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(body)
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    target = snap / CONFIG_FILE
    try:
        target.symlink_to(os.path.relpath(blob, snap))
    except OSError:  # filesystems without symlinks: the cache then stores the file itself
        target.write_bytes(body)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return target


# ------------------------------------------------------------------------------------------ fallback chain


def test_explicit_preprocessor_config_file(tmp_path_factory: pytest.TempPathFactory, no_hub: list[str]) -> None:
    cfg_file = neutral_dir(tmp_path_factory, None) / "pp.json"
    cfg_file.write_text(json.dumps({**QWEN25_HUB_FILE, "max_pixels": 1003520}))
    geo = resolve_geometry("some/unknown-model", preprocessor_config=str(cfg_file))
    assert geo.source == f"file:{cfg_file}"
    assert geo.family.name == "qwen2_vl"  # from image_processor_type, patch 14
    # 1920x1080 with max 1003520 -> 728x1316 -> 26*47 (see test_image_tokens).
    assert geo.num_tokens(1920, 1080) == 1222
    assert no_hub == []


def test_explicit_file_wins_over_local_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = neutral_dir(tmp_path_factory, {"image_processor_type": "Phi3VImageProcessor", "num_crops": 16})
    explicit = model_dir / "other.json"
    explicit.write_text(json.dumps({"image_processor_type": "Phi3VImageProcessor", "num_crops": 4}))
    geo = resolve_geometry(str(model_dir), preprocessor_config=str(explicit))
    assert geo.source.startswith("file:")
    assert geo.config["num_crops"] == 4
    assert geo.num_tokens(1024, 768) == 757


def test_explicit_file_missing_raises() -> None:
    with pytest.raises(GeometryNotFoundError, match=r"does-not-exist\.json does not exist"):
        resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", preprocessor_config="/nonexistent/does-not-exist.json")


def test_model_as_local_directory(tmp_path_factory: pytest.TempPathFactory, no_hub: list[str]) -> None:
    model_dir = neutral_dir(tmp_path_factory, QWEN25_HUB_FILE)
    geo = resolve_geometry(str(model_dir))
    assert geo.source == f"local:{model_dir / CONFIG_FILE}"
    assert geo.family.name == "qwen2_vl"
    assert geo.num_tokens(1024, 768) == 999
    assert no_hub == []


def test_hf_cache_hit(tmp_path_factory: pytest.TempPathFactory, no_hub: list[str]) -> None:
    cache = tmp_path_factory.mktemp("hf-cache")
    cfg = {**QWEN25_HUB_FILE, "max_pixels": 1003520}  # differs from the built-in default on purpose
    snap_file = make_hf_cache(cache, "Qwen/Qwen2.5-VL-7B-Instruct", cfg)
    geo = resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=str(cache))
    assert geo.source.startswith("hf-cache:")
    assert Path(geo.source.removeprefix("hf-cache:")) == snap_file
    assert geo.family.name == "qwen2_5_vl"  # the model id names the family
    assert geo.config["max_pixels"] == 1003520
    assert geo.num_tokens(1920, 1080) == 1222  # not 2691: the file's numbers, not the defaults
    assert no_hub == []


def test_hf_cache_unknown_id_family_from_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("hf-cache")
    make_hf_cache(cache, "SomeOrg/SomeModel", {"image_processor_type": "LlavaNextImageProcessor"})
    geo = resolve_geometry("SomeOrg/SomeModel", cache_dir=str(cache))
    assert geo.family.name == "llava_next"
    assert geo.num_tokens(336, 336) == 1176


def test_hf_cache_refs_point_at_right_snapshot(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A cache with two snapshots: refs/main decides which file is used."""
    cache = tmp_path_factory.mktemp("hf-cache")
    make_hf_cache(cache, "SomeOrg/Two", {"image_processor_type": "Phi3VImageProcessor", "num_crops": 4}, "b" * 40)
    repo_dir = cache / "models--SomeOrg--Two"
    newer = repo_dir / "snapshots" / ("c" * 40)
    newer.mkdir()
    (newer / CONFIG_FILE).write_text(json.dumps({"image_processor_type": "Phi3VImageProcessor", "num_crops": 16}))
    assert resolve_geometry("SomeOrg/Two", cache_dir=str(cache)).config["num_crops"] == 4
    (repo_dir / "refs" / "main").write_text("c" * 40)
    clear_cache()
    assert resolve_geometry("SomeOrg/Two", cache_dir=str(cache)).config["num_crops"] == 16


@pytest.mark.parametrize(
    ("model", "family", "w", "h", "tokens"),
    [
        ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl", 1024, 768, 999),
        ("Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl", 1920, 1080, 2691),
        ("Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl", 640, 480, 300),
        ("llava-hf/llava-1.5-7b-hf", "llava", 1000, 10, 576),
        ("llava-hf/llava-v1.6-mistral-7b-hf", "llava_next", 672, 336, 1752),
        ("microsoft/Phi-3-vision-128k-instruct", "phi3_v", 1024, 768, 1921),
    ],
)
def test_builtin_defaults_for_known_family(
    model: str, family: str, w: int, h: int, tokens: int, empty_cache: str, no_hub: list[str]
) -> None:
    geo = resolve_geometry(model, cache_dir=empty_cache)
    assert geo.source == f"builtin:{family}"
    assert geo.family.name == family
    assert dict(geo.config) == dict(geo.family.defaults)
    assert geo.num_tokens(w, h) == tokens
    assert no_hub == []


def test_unknown_model_offline_error_names_everything(empty_cache: str, no_hub: list[str]) -> None:
    with pytest.raises(GeometryNotFoundError) as info:
        resolve_geometry("acme/mystery-model", cache_dir=empty_cache)
    msg = str(info.value)
    assert "'acme/mystery-model'" in msg
    assert f"local directory {Path('acme/mystery-model') / CONFIG_FILE}" in msg
    assert f"Hugging Face cache ({empty_cache})" in msg
    assert "Hugging Face hub (skipped: HF_HUB_OFFLINE is set)" in msg
    assert OVERRIDE_FLAGS in msg
    for flag in ("--mm-family", "--preprocessor-config", "--mm-processor-kwargs"):
        assert flag in msg
    assert no_hub == []
    assert isinstance(info.value, LookupError)


def test_unknown_model_default_cache_named(monkeypatch: pytest.MonkeyPatch, empty_cache: str) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", empty_cache)  # not read by the message, but keeps the real cache out
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", empty_cache)
    with pytest.raises(GeometryNotFoundError, match=r"Hugging Face cache \(default HF_HUB_CACHE\)"):
        resolve_geometry("acme/other-mystery")


def test_offline_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("1", "true", "YES", " on "):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert geometry._offline()


def test_hub_step_used_when_online(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory, empty_cache: str
) -> None:
    """With the offline flag forced off, the hub download is the step after the cache (faked: no network)."""
    downloaded = neutral_dir(tmp_path_factory, {"image_processor_type": "CLIPImageProcessor", "crop_size": 224})
    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(downloaded / CONFIG_FILE)

    monkeypatch.setattr(geometry, "_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    geo = resolve_geometry("acme/clip-thing", cache_dir=empty_cache)
    assert geo.source == f"hub:{downloaded / CONFIG_FILE}"
    assert geo.family.name == "llava"
    assert geo.num_tokens(10, 10) == 256  # (224 // 14) ** 2
    assert calls == [
        {"repo_id": "acme/clip-thing", "filename": CONFIG_FILE, "cache_dir": empty_cache, "etag_timeout": 5}
    ]


def test_hub_failure_is_reported(monkeypatch: pytest.MonkeyPatch, empty_cache: str) -> None:
    def failing_download(**kwargs: Any) -> str:
        raise OSError("no route")

    monkeypatch.setattr(geometry, "_offline", lambda: False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", failing_download)
    with pytest.raises(GeometryNotFoundError, match=r"Hugging Face hub \(failed: OSError\)"):
        resolve_geometry("acme/unreachable", cache_dir=empty_cache)
    # A known family still falls back to its defaults after a hub failure.
    assert resolve_geometry("Qwen/Qwen3-VL-2B-Instruct", cache_dir=empty_cache).source == "builtin:qwen3_vl"


# ------------------------------------------------------------------------------------------- memoization


def test_memoization_returns_same_object(empty_cache: str) -> None:
    a = resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=empty_cache)
    b = resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=empty_cache)
    assert a is b
    c = resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=empty_cache, overrides={"max_pixels": 1003520})
    assert c is not a
    assert (
        resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=empty_cache, overrides={"max_pixels": 1003520}) is c
    )
    clear_cache()
    assert resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=empty_cache) is not a


def test_memo_ignores_override_order(empty_cache: str) -> None:
    a = resolve_geometry("Qwen/Qwen3-VL-8B", cache_dir=empty_cache, overrides={"min_pixels": 1, "max_pixels": 2000000})
    b = resolve_geometry("Qwen/Qwen3-VL-8B", cache_dir=empty_cache, overrides={"max_pixels": 2000000, "min_pixels": 1})
    assert a is b


def test_memo_keyed_on_offline_flag(monkeypatch: pytest.MonkeyPatch, empty_cache: str) -> None:
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: (_ for _ in ()).throw(OSError("x")))
    offline = resolve_geometry("Qwen/Qwen3-VL-8B", cache_dir=empty_cache)
    monkeypatch.setattr(geometry, "_offline", lambda: False)
    online = resolve_geometry("Qwen/Qwen3-VL-8B", cache_dir=empty_cache)
    assert online is not offline


# ---------------------------------------------------------------------------------- family and config keys


@pytest.mark.parametrize(
    ("raw", "family"),
    [
        ({"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14}, "qwen2_vl"),
        ({"image_processor_type": "Qwen2VLImageProcessorFast", "patch_size": 16}, "qwen3_vl"),
        ({"image_processor_type": "LlavaNextImageProcessor"}, "llava_next"),
        ({"image_processor_type": "Phi3VImageProcessor", "num_crops": 4}, "phi3_v"),
        ({"image_processor_type": "CLIPImageProcessor"}, "llava"),
        ({"processor_class": "LlavaNextProcessor"}, "llava_next"),  # processor_class as a fallback
    ],
)
def test_family_inferred_from_image_processor_type(
    raw: dict[str, Any], family: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    model_dir = neutral_dir(tmp_path_factory, raw)
    assert resolve_geometry(str(model_dir)).family.name == family


def test_unrecognised_processor_type_asks_for_family(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = neutral_dir(tmp_path_factory, {"image_processor_type": "SiglipImageProcessor"})
    with pytest.raises(GeometryNotFoundError, match=r"SiglipImageProcessor.*--mm-family"):
        resolve_geometry(str(model_dir))
    # An explicit family resolves it, reading what the file says for that family.
    geo = resolve_geometry(str(model_dir), family="llava")
    assert geo.family.name == "llava"
    assert geo.num_tokens(100, 100) == 576


def test_explicit_family_wins_over_model_name(empty_cache: str) -> None:
    geo = resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", family="phi3_v", cache_dir=empty_cache)
    assert geo.family.name == "phi3_v"
    assert geo.source == "builtin:phi3_v"


def test_unknown_explicit_family() -> None:
    with pytest.raises(ValueError, match="unknown model family"):
        resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", family="qwen9")


def test_qwen3_size_keys_honoured(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = neutral_dir(
        tmp_path_factory,
        {
            "size": {"shortest_edge": 4096, "longest_edge": 100000},
            "patch_size": 16,
            "merge_size": 2,
            "image_processor_type": "Qwen2VLImageProcessorFast",
        },
    )
    geo = resolve_geometry(str(model_dir))
    assert geo.family.name == "qwen3_vl"
    assert geo.config["min_pixels"] == 4096
    assert geo.config["max_pixels"] == 100000
    # 1024x768 at factor 32 is 786432 > 100000 -> beta = sqrt(7.86432) = 2.8043; h = floor(768/2.8043/32) =
    # floor(8.56) = 8, w = floor(1024/2.8043/32) = floor(11.41) = 11 -> 88 tokens (the hub default gives 768).
    assert geo.num_tokens(1024, 768) == 88


def test_top_level_pixels_win_over_size(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = neutral_dir(
        tmp_path_factory,
        {**QWEN25_HUB_FILE, "max_pixels": 1003520, "size": {"shortest_edge": 1, "longest_edge": 99}},
    )
    geo = resolve_geometry(str(model_dir))
    assert geo.config["min_pixels"] == 3136
    assert geo.config["max_pixels"] == 1003520


def test_file_omissions_fall_back_to_family_defaults(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = neutral_dir(tmp_path_factory, {"image_processor_type": "Qwen2VLImageProcessor"})
    geo = resolve_geometry(str(model_dir))
    assert dict(geo.config) == {"patch_size": 14, "merge_size": 2, "min_pixels": 3136, "max_pixels": 12845056}


def test_llava_crop_size_and_pinpoints_from_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    clip = neutral_dir(
        tmp_path_factory, {"image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 224, "width": 224}}
    )
    assert resolve_geometry(str(clip)).num_tokens(50, 50) == 256  # (224 // 14) ** 2
    nxt = neutral_dir(
        tmp_path_factory,
        {"image_processor_type": "LlavaNextImageProcessor", "crop_size": 336, "image_grid_pinpoints": [[336, 336]]},
    )
    geo = resolve_geometry(str(nxt))
    assert geo.config["image_grid_pinpoints"] == ((336, 336),)
    # Single 336x336 pinpoint, 640x480: cur 24x24, new_h = 18 -> 576 + 18*24 + 18 = 1026.
    assert geo.num_tokens(640, 480) == 1026


def test_non_object_json_rejected(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = neutral_dir(tmp_path_factory, None)
    (d / CONFIG_FILE).write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        resolve_geometry(str(d))


# ---------------------------------------------------------------------------------------------- overrides


def test_overrides_applied_to_builtin(empty_cache: str) -> None:
    geo = resolve_geometry("Qwen/Qwen2.5-VL-7B-Instruct", cache_dir=empty_cache, overrides={"max_pixels": 1003520})
    assert geo.config["max_pixels"] == 1003520
    assert geo.num_tokens(1920, 1080) == 1222


def test_overrides_win_over_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    model_dir = neutral_dir(tmp_path_factory, {"image_processor_type": "Phi3VImageProcessor", "num_crops": 16})
    assert resolve_geometry(str(model_dir), overrides={"num_crops": 4}).num_tokens(1024, 768) == 757


def test_list_valued_overrides(empty_cache: str) -> None:
    """--mm-processor-kwargs is JSON, so values may be lists (e.g. anyres pinpoints)."""
    kwargs = {"image_grid_pinpoints": [[336, 336]]}
    geo = resolve_geometry("llava-hf/llava-v1.6-mistral-7b-hf", cache_dir=empty_cache, overrides=kwargs)
    assert geo.num_tokens(640, 480) == 1026
    assert resolve_geometry("llava-hf/llava-v1.6-mistral-7b-hf", cache_dir=empty_cache, overrides=kwargs) is geo


def test_config_is_read_only(empty_cache: str) -> None:
    geo = resolve_geometry("Qwen/Qwen3-VL-8B-Instruct", cache_dir=empty_cache)
    with pytest.raises(TypeError):
        geo.config["max_pixels"] = 1  # type: ignore[index]
    # Family defaults are not aliased by the resolved config.
    assert geo.config is not geo.family.defaults
