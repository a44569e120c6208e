"""The content-addressed asset directory: references, verification, confinement, limits and the sweep."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from harness.mm.assets import SCHEME, AssetError, AssetStore

DATA = b"\x89PNG fake image bytes for the asset store" * 10
LIMIT = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> AssetStore:
    return AssetStore(tmp_path / "assets")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def status_of(store: AssetStore, ref: str, max_bytes: int = LIMIT) -> int:
    with pytest.raises(AssetError) as err:
        store.read(ref, max_bytes)
    return err.value.status


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when), follow_symlinks=False)


# --- put / read ------------------------------------------------------------------------------------------------


def test_put_read_round_trip(store: AssetStore) -> None:
    ref = store.put(DATA)
    assert ref == f"mmfile://{digest(DATA)}"
    assert ref.startswith(SCHEME)
    assert (store.src / digest(DATA)).read_bytes() == DATA
    assert store.read(ref, LIMIT) == DATA
    assert store.read(ref, LIMIT) == DATA  # verified once, still served
    assert store.read(digest(DATA), LIMIT) == DATA  # the bare digest works too
    assert store.read(f"{ref}.png", LIMIT) == DATA  # an extension is allowed and ignored


def test_put_is_idempotent(store: AssetStore) -> None:
    ref = store.put(DATA)
    mtime = (store.src / digest(DATA)).stat().st_mtime_ns
    assert store.put(DATA) == ref
    assert (store.src / digest(DATA)).stat().st_mtime_ns == mtime  # not rewritten
    assert sorted(p.name for p in store.src.iterdir()) == [digest(DATA)]  # no temp files left behind
    other = store.put(b"other")
    assert other != ref
    assert store.read(other, LIMIT) == b"other"


def test_put_creates_the_layout(store: AssetStore) -> None:
    assert not store.root.exists()
    store.put(b"x")
    assert store.src.is_dir() and store.derived.is_dir()


def test_tampered_file_is_409(store: AssetStore) -> None:
    ref = store.put(DATA)
    (store.src / digest(DATA)).write_bytes(b"something else entirely")
    assert status_of(store, ref) == 409


def test_tampering_after_a_verified_read_is_caught(store: AssetStore) -> None:
    ref = store.put(DATA)
    assert store.read(ref, LIMIT) == DATA
    path = store.src / digest(DATA)
    path.write_bytes(DATA[::-1])  # same size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # a change the memo must see
    assert status_of(store, ref) == 409


@pytest.mark.parametrize(
    "ref",
    [
        "mmfile://../../etc/passwd",
        "mmfile://abc123",
        "mmfile://" + "a" * 63,
        "mmfile://" + "a" * 65,
        "mmfile://" + "A" * 64,
        "mmfile://" + "g" * 64,
        "mmfile://" + "a" * 64 + "/../x",
        "mmfile://" + "a" * 64 + ".toolongext",
        "mmfile://",
        "file:///etc/passwd",
    ],
)
def test_invalid_references_are_400(store: AssetStore, ref: str) -> None:
    store.put(DATA)
    assert status_of(store, ref) == 400
    with pytest.raises(AssetError):
        store.path_of(ref)


def test_uppercase_digest_is_not_an_alias(store: AssetStore) -> None:
    ref = store.put(DATA)
    assert status_of(store, ref.upper().replace("MMFILE://", SCHEME)) == 400


def test_symlink_out_of_src_is_403(store: AssetStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"top secret")
    store.ensure()
    name = digest(b"top secret")  # even a "valid" hash of the target's content must not get through
    (store.src / name).symlink_to(secret)
    assert status_of(store, SCHEME + name) == 403


def test_symlink_to_another_asset_is_refused(store: AssetStore) -> None:
    real = store.put(DATA)
    alias = digest(b"different content")
    (store.src / alias).symlink_to(store.src / digest(DATA))
    assert store.read(real, LIMIT) == DATA
    assert status_of(store, SCHEME + alias) == 403  # a symlink is never served, whatever it points at
    with pytest.raises(AssetError) as err:
        store.stamp(SCHEME + alias)
    assert err.value.status == 403


def test_symlink_with_matching_content_is_refused(store: AssetStore, tmp_path: Path) -> None:
    """Even a link whose target holds exactly the bytes its name promises: only regular files in src/."""
    outside = tmp_path / "copy.bin"
    outside.write_bytes(DATA)
    store.ensure()
    (store.src / digest(DATA)).symlink_to(outside)
    assert status_of(store, SCHEME + digest(DATA)) == 403


def test_fifo_in_src_is_refused_without_blocking(store: AssetStore) -> None:
    store.ensure()
    name = digest(b"a fifo")
    os.mkfifo(store.src / name)
    assert status_of(store, SCHEME + name) == 403  # returns at once: opened non-blocking, then fstat


@pytest.mark.parametrize("suffix", ["\n", ".png\n", "\n.png"])
def test_trailing_newline_is_not_a_valid_reference(store: AssetStore, suffix: str) -> None:
    ref = store.put(DATA)
    assert status_of(store, ref + suffix) == 400


def test_in_place_rewrite_restoring_size_and_mtime_is_caught(store: AssetStore) -> None:
    """The stamp includes ctime, which a writer cannot set back: same size and mtime still re-verify."""
    ref = store.put(DATA)
    assert store.read(ref, LIMIT) == DATA
    path = store.src / digest(DATA)
    st = path.stat()
    path.write_bytes(DATA[::-1])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert status_of(store, ref) == 409


def test_replaced_file_changes_the_stamp(store: AssetStore) -> None:
    ref = store.put(DATA)
    before = store.stamp(ref)
    data, stamp = store.read_stamped(ref, LIMIT)
    assert (data, stamp) == (DATA, before)
    tmp = store.src / "replacement"
    tmp.write_bytes(DATA)
    os.replace(tmp, store.src / digest(DATA))  # same bytes, new inode
    assert store.stamp(ref) != before
    assert store.read(ref, LIMIT) == DATA


def test_size_cap_is_413(store: AssetStore) -> None:
    ref = store.put(DATA)
    assert status_of(store, ref, max_bytes=len(DATA) - 1) == 413
    assert store.read(ref, len(DATA)) == DATA  # exactly the limit is fine


def test_missing_is_404(store: AssetStore) -> None:
    assert status_of(store, SCHEME + digest(b"never stored")) == 404
    store.put(DATA)
    assert status_of(store, SCHEME + digest(b"never stored")) == 404


# --- derived artifacts and the sweep ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a/b", "../x", ".hidden"])
def test_derived_path_rejects_bad_names(store: AssetStore, name: str) -> None:
    with pytest.raises(AssetError) as err:
        store.derived_path(name)
    assert err.value.status == 400


def test_sweep_removes_only_old_derived_files(store: AssetStore) -> None:
    now = 1_700_000_000.0
    store.ensure()
    old_src = store.put(b"old source")
    new_src = store.put(b"new source")
    set_mtime(store.src / old_src.removeprefix(SCHEME), now - 10 * 86400)
    set_mtime(store.src / new_src.removeprefix(SCHEME), now)
    old = store.derived_path("old.json")
    old.write_text("{}")
    set_mtime(old, now - 3600)
    fresh = store.derived_path("fresh.json")
    fresh.write_text("{}")
    set_mtime(fresh, now - 60)
    subdir = store.derived / "subdir"
    subdir.mkdir()
    set_mtime(subdir, now - 86400)

    result = store.sweep(max_age_s=600, now=now)

    assert (result.removed, result.kept, result.sources) == (1, 1, 2)
    assert not old.exists()
    assert fresh.exists()
    assert subdir.is_dir()  # only plain files are swept
    assert store.read(old_src, LIMIT) == b"old source"  # sources are never swept, however old
    assert store.read(new_src, LIMIT) == b"new source"


def test_sweep_never_follows_a_derived_symlink_into_src(store: AssetStore) -> None:
    now = 1_700_000_000.0
    ref = store.put(DATA)
    src_file = store.src / digest(DATA)
    set_mtime(src_file, now - 86400)
    link = store.derived / "link"
    link.symlink_to(src_file)
    store.sweep(max_age_s=60, now=now)
    assert src_file.is_file()
    assert store.read(ref, LIMIT) == DATA


def test_sweep_on_an_empty_store(store: AssetStore) -> None:
    result = store.sweep(max_age_s=0)
    assert (result.removed, result.kept, result.sources) == (0, 0, 0)
