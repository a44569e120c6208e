"""LoRA adapter resolution and validation against real adapter directories (safetensors written by numpy)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from harness.proxy.adapters import CONFIG_FILE, WEIGHTS_FILE, AdapterCatalog, AdapterError, AdapterInfo

BASE = "Qwen/Qwen3-VL-2B-Instruct"
OTHER_BASE = "Qwen/Qwen2.5-VL-3B-Instruct"
HIDDEN = 64
PREFIX = "base_model.model.model.layers"


def lora_tensors(rank: int, modules: tuple[str, ...] = ("q_proj", "v_proj"), layers: int = 2, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for module in modules:
            key = f"{PREFIX}.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.standard_normal((rank, HIDDEN)).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = rng.standard_normal((HIDDEN, rank)).astype(np.float32)
    return tensors


def write_adapter(
    directory: Path,
    *,
    rank: int = 8,
    base: str | None = BASE,
    tensors: dict[str, np.ndarray] | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj"]}
    if base is not None:
        cfg["base_model_name_or_path"] = base
    cfg.update(config or {})
    (directory / CONFIG_FILE).write_text(json.dumps(cfg))
    save_file(tensors if tensors is not None else lora_tensors(rank, seed=seed), str(directory / WEIGHTS_FILE))
    return directory


def bump_mtime(path: Path, seconds: int = 10) -> None:
    """Make a rewrite visible to the stat-based memo regardless of the file system's timestamp granularity."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "adapters"
    r.mkdir()
    return r


def catalog(root: Path | None, **kw: Any) -> AdapterCatalog:
    return AdapterCatalog(root=root, base_model=BASE, **kw)


def expect_error(cat: AdapterCatalog, name: str, status: int, reason: str) -> AdapterError:
    with pytest.raises(AdapterError) as err:
        cat.resolve(name)
    e = err.value
    assert e.status == status
    assert e.adapter == name
    assert e.base == BASE
    assert reason in e.reason
    assert repr(name) in str(e) and repr(BASE) in str(e) and e.reason in str(e)
    return e


# --- valid adapters --------------------------------------------------------------------------------------------


def test_valid_adapter(root: Path) -> None:
    write_adapter(root / "sql-lora", rank=8)
    info = catalog(root).resolve("sql-lora")
    assert isinstance(info, AdapterInfo)
    assert info.name == "sql-lora"
    assert info.path == (root / "sql-lora").resolve()
    assert info.base_model == BASE
    assert info.rank == 8  # from the tensor shapes
    assert info.target_modules == ("q_proj", "v_proj")  # from the tensor names, not the config
    assert len(info.digest) == 64 and int(info.digest, 16) >= 0
    assert info.identity == f"sql-lora@{info.digest[:12]}"
    assert info.resolve_ms >= 0 and info.validate_ms >= 0


def test_rank_comes_from_tensors_not_config(root: Path) -> None:
    tensors = lora_tensors(4, ("q_proj",)) | lora_tensors(16, ("o_proj",), seed=1)
    write_adapter(root / "mixed", rank=2, tensors=tensors)
    info = catalog(root).resolve("mixed")
    assert info.rank == 16  # the largest lora_A rank
    assert info.target_modules == ("o_proj", "q_proj")


def test_digest_is_stable_and_content_based(root: Path, tmp_path: Path) -> None:
    write_adapter(root / "a", seed=3)
    first = catalog(root).resolve("a").digest
    assert catalog(root).resolve("a").digest == first  # a fresh catalog, same files
    # Identical files elsewhere under another name digest the same: identity is content, not location.
    write_adapter(tmp_path / "copy", seed=3)
    other = catalog(tmp_path).resolve("copy")
    assert other.digest == first
    assert other.identity != catalog(root).resolve("a").identity  # but the name is part of the identity


def test_digest_changes_when_weights_change(root: Path) -> None:
    cat = catalog(root)
    d = write_adapter(root / "a", seed=1)
    before = cat.resolve("a")
    write_adapter(d, seed=2)  # same shapes, same size, different values
    bump_mtime(d / WEIGHTS_FILE)
    after = cat.resolve("a")
    assert after is not before
    assert after.digest != before.digest
    assert after.rank == before.rank


def test_digest_changes_when_config_changes(root: Path) -> None:
    cat = catalog(root)
    d = write_adapter(root / "a", config={"lora_alpha": 16})
    before = cat.resolve("a").digest
    (d / CONFIG_FILE).write_text((d / CONFIG_FILE).read_text().replace('"lora_alpha": 16', '"lora_alpha": 32'))
    bump_mtime(d / CONFIG_FILE)
    assert cat.resolve("a").digest != before


def test_memoized_while_files_are_unchanged(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = catalog(root)
    write_adapter(root / "a")
    first = cat.resolve("a")
    calls: list[str] = []
    original = AdapterCatalog._validate

    def counting(self: AdapterCatalog, name: str, *args: Any) -> AdapterInfo:
        calls.append(name)
        return original(self, name, *args)

    monkeypatch.setattr(AdapterCatalog, "_validate", counting)
    assert cat.resolve("a") is first
    assert cat.resolve("a") is first
    assert calls == []
    bump_mtime(root / "a" / WEIGHTS_FILE)
    assert cat.resolve("a") is not first
    assert calls == ["a"]


def test_registry_entry_points_elsewhere(root: Path, tmp_path: Path) -> None:
    elsewhere = write_adapter(tmp_path / "shared" / "v7", rank=4)
    cat = catalog(root, registry={"sql": {"path": str(elsewhere), "base_model": BASE}})
    info = cat.resolve("sql")
    assert info.path == elsewhere
    assert info.rank == 4
    expect_error(catalog(root), "sql", 404, "no adapter_config.json")  # not under root without the registry


def test_registry_works_without_root(tmp_path: Path) -> None:
    elsewhere = write_adapter(tmp_path / "x")
    assert catalog(None, registry={"x": {"path": str(elsewhere)}}).resolve("x").rank == 8
    expect_error(catalog(None), "x", 404, "no adapter directory")


def test_registry_base_disagreeing_with_file_warns_and_file_wins(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = write_adapter(tmp_path / "x", base=BASE)
    cat = catalog(root, registry={"x": {"path": str(elsewhere), "base_model": OTHER_BASE}})
    with caplog.at_level(logging.WARNING, logger="harness.proxy.adapters"):
        info = cat.resolve("x")
    assert info.base_model == BASE
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert OTHER_BASE in warnings[0].getMessage() and BASE in warnings[0].getMessage()


def test_registry_base_disagreeing_with_file_cannot_rescue_a_wrong_base(root: Path, tmp_path: Path) -> None:
    elsewhere = write_adapter(tmp_path / "x", base=OTHER_BASE)
    cat = catalog(root, registry={"x": {"path": str(elsewhere), "base_model": BASE}})
    expect_error(cat, "x", 400, f"trained for base model {OTHER_BASE!r}")


def test_registry_base_applies_when_the_file_names_none(root: Path, tmp_path: Path) -> None:
    elsewhere = write_adapter(tmp_path / "x", base=None)
    assert catalog(root, registry={"x": {"path": str(elsewhere), "base_model": BASE}}).resolve("x").base_model == BASE
    wrong = catalog(root, registry={"x": {"path": str(elsewhere), "base_model": OTHER_BASE}})
    expect_error(wrong, "x", 400, OTHER_BASE)
    assert catalog(root, registry={"x": {"path": str(elsewhere)}}).resolve("x").base_model is None


# --- rejections ------------------------------------------------------------------------------------------------


def test_wrong_base_names_adapter_base_and_reason(root: Path) -> None:
    write_adapter(root / "other", base=OTHER_BASE)
    e = expect_error(catalog(root), "other", 400, "trained for base model")
    assert OTHER_BASE in str(e)


def test_rank_above_max_lora_rank(root: Path) -> None:
    write_adapter(root / "big", rank=32)
    e = expect_error(catalog(root, max_lora_rank=16), "big", 400, "rank 32 exceeds")
    assert "16" in e.reason
    assert catalog(root, max_lora_rank=32).resolve("big").rank == 32  # the limit itself is allowed


def test_use_dora_in_config(root: Path) -> None:
    write_adapter(root / "dora", config={"use_dora": True})
    expect_error(catalog(root), "dora", 400, "DoRA")


def test_dora_magnitude_vectors(root: Path) -> None:
    tensors = lora_tensors(8)
    tensors[f"{PREFIX}.0.self_attn.q_proj.lora_magnitude_vector"] = np.ones(HIDDEN, dtype=np.float32)
    write_adapter(root / "dora", tensors=tensors)
    expect_error(catalog(root), "dora", 400, "magnitude vectors")


@pytest.mark.parametrize(
    "key",
    [
        "visual.blocks.0.attn.qkv.lora_A.weight",
        "base_model.model.visual.blocks.3.mlp.fc1.lora_A.weight",
        "base_model.model.vision_tower.encoder.layers.0.q_proj.lora_A.weight",
    ],
)
def test_vision_tower_weights(root: Path, key: str) -> None:
    tensors = lora_tensors(8)
    tensors[key] = np.zeros((8, HIDDEN), dtype=np.float32)
    write_adapter(root / "vis", tensors=tensors)
    e = expect_error(catalog(root), "vis", 400, "vision tower")
    assert key in e.reason


def test_no_tensors(root: Path) -> None:
    write_adapter(root / "empty", tensors={})
    expect_error(catalog(root), "empty", 400, "holds no tensors")


def test_missing_weights_file(root: Path) -> None:
    d = write_adapter(root / "a")
    (d / WEIGHTS_FILE).unlink()
    expect_error(catalog(root), "a", 404, f"{WEIGHTS_FILE} is missing")


def test_missing_directory(root: Path) -> None:
    expect_error(catalog(root), "nope", 404, "no adapter_config.json")


@pytest.mark.parametrize("name", ["../etc", "..", "a/b", ".hidden", "", "x" * 129, "sp ace"])
def test_bad_names_are_404(root: Path, name: str) -> None:
    expect_error(catalog(root), name, 404, "not a valid adapter name")


def test_symlink_escaping_root_is_404(root: Path, tmp_path: Path) -> None:
    outside = write_adapter(tmp_path / "outside")
    (root / "sneaky").symlink_to(outside, target_is_directory=True)
    expect_error(catalog(root), "sneaky", 404, "escapes the adapter directory")


def test_corrupt_safetensors(root: Path) -> None:
    d = write_adapter(root / "bad")
    (d / WEIGHTS_FILE).write_bytes(b"\xff" * 7 + b"not a safetensors file")
    expect_error(catalog(root), "bad", 400, f"unreadable {WEIGHTS_FILE}")


def test_truncated_safetensors(root: Path) -> None:
    d = write_adapter(root / "bad")
    data = (d / WEIGHTS_FILE).read_bytes()
    (d / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    expect_error(catalog(root), "bad", 400, f"unreadable {WEIGHTS_FILE}")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '"just a string"'])
def test_bad_config(root: Path, text: str) -> None:
    d = write_adapter(root / "bad")
    (d / CONFIG_FILE).write_text(text)
    expect_error(catalog(root), "bad", 400, CONFIG_FILE)
