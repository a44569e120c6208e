"""A run-scoped, content-addressed asset directory for images: ``mmfile://<sha256>`` references.

Large payloads need not travel inline: a client stores the image once (``AssetStore.put``) and sends the
reference; the proxy and the workers resolve it from the same directory. Layout::

    <root>/src/<sha256>        source images, named by the SHA-256 of their bytes; never deleted by a sweep
    <root>/derived/<name>      derived artifacts (decoded metadata, resized copies): evicted by age

Resolution accepts exactly 64 hex digits (optionally with a file extension), verifies the content hash on
first read, and refuses anything that would resolve outside ``src/`` (traversal, symlinks out).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import AssetError

SCHEME = "mmfile://"
_REF_RE = re.compile(r"^([0-9a-f]{64})(\.[A-Za-z0-9]{1,8})?$")


@dataclass(frozen=True)
class SweepResult:
    removed: int
    kept: int
    sources: int


class AssetStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.src = self.root / "src"
        self.derived = self.root / "derived"
        self._verified: dict[str, tuple[float, int]] = {}

    def ensure(self) -> AssetStore:
        self.src.mkdir(parents=True, exist_ok=True)
        self.derived.mkdir(parents=True, exist_ok=True)
        return self

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its ``mmfile://`` reference."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.src / digest
        if not path.exists():
            self.ensure()
            tmp = self.src / f".{digest}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return SCHEME + digest

    def path_of(self, ref: str) -> Path:
        name = ref[len(SCHEME) :] if ref.startswith(SCHEME) else ref
        m = _REF_RE.match(name)
        if m is None:
            raise AssetError(f"invalid asset reference {ref!r}: expected mmfile://<sha256>", status=400)
        path = (self.src / m.group(1)).resolve()
        if not path.is_relative_to(self.src.resolve()):
            raise AssetError(f"asset reference {ref!r} resolves outside the asset directory", status=403)
        return path

    def read(self, ref: str, max_bytes: int) -> bytes:
        path = self.path_of(ref)
        # Verify against the digest the reference names, not the resolved file's name: a symlink inside src/
        # to another asset must not serve that asset's bytes under this name.
        expected = ref.removeprefix(SCHEME)[:64]
        try:
            st = path.stat()
        except FileNotFoundError:
            raise AssetError(f"asset {ref} not found in {self.src}", status=404) from None
        if st.st_size > max_bytes:
            raise AssetError(f"asset {ref} is larger than the limit of {max_bytes} bytes", status=413)
        data = path.read_bytes()
        stamp = (st.st_mtime, st.st_size)
        if self._verified.get(expected) != stamp:
            if hashlib.sha256(data).hexdigest() != expected:
                raise AssetError(f"asset {ref} failed verification: content does not match its hash", 409)
            self._verified[expected] = stamp
        return data

    def derived_path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise AssetError(f"invalid derived artifact name {name!r}")
        return self.derived / name

    def sweep(self, max_age_s: float, now: float | None = None) -> SweepResult:
        """Delete derived artifacts older than ``max_age_s``; source images are never touched."""
        now = time.time() if now is None else now
        removed = kept = 0
        if self.derived.is_dir():
            for path in self.derived.iterdir():
                if not path.is_file():
                    continue
                if now - path.stat().st_mtime > max_age_s:
                    path.unlink(missing_ok=True)
                    removed += 1
                else:
                    kept += 1
        sources = sum(1 for _ in self.src.iterdir()) if self.src.is_dir() else 0
        return SweepResult(removed=removed, kept=kept, sources=sources)
