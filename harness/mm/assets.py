"""A run-scoped, content-addressed asset directory for images: ``mmfile://<sha256>`` references.

Large payloads need not travel inline: a client stores the image once (``AssetStore.put``) and sends the
reference; the proxy and the workers resolve it from the same directory. Layout::

    <root>/src/<sha256>        source images, named by the SHA-256 of their bytes; never deleted by a sweep
    <root>/derived/<name>      derived artifacts (decoded metadata, resized copies): evicted by age

Resolution accepts exactly 64 hex digits (optionally with a file extension) and serves only a regular file
of that name, never a symlink (in or out of ``src/``). The hash in the name is the hash of the bytes served:
a file is verified on first read and again whenever its identity (device, inode, size, mtime, ctime) changes,
and derived facts are keyed by that identity too (``Stamp``), so a source replaced after its facts were
written is read and verified again instead of vouched for.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import AssetError, ImageError
from harness.mm.images import read_fd

SCHEME = "mmfile://"
#: Matched with ``fullmatch``: ``$`` would also accept a trailing newline.
_REF_RE = re.compile(r"([0-9a-f]{64})(\.[A-Za-z0-9]{1,8})?")

#: A source file's identity: (device, inode, size, mtime_ns, ctime_ns). ctime cannot be set back by a writer,
#: so an in-place rewrite that restores size and mtime still changes the stamp.
Stamp = tuple[int, int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
        self._verified: dict[str, Stamp] = {}

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
        m = _REF_RE.fullmatch(name)
        if m is None:
            raise AssetError(f"invalid asset reference {ref!r}: expected mmfile://<sha256>", status=400)
        return self.src / m.group(1)  # 64 hex digits: no separator, no "..", nothing to resolve

    def stamp(self, ref: str) -> Stamp:
        """The identity of the file ``ref`` names, without reading it (404 missing, 403 not a regular file)."""
        path = self.path_of(ref)
        try:
            st = path.lstat()
        except FileNotFoundError:
            raise AssetError(f"asset {ref} not found in {self.src}", status=404) from None
        except OSError as exc:
            raise AssetError(f"asset {ref} cannot be read: {exc.strerror}", status=403) from None
        if not stat.S_ISREG(st.st_mode):  # a symlink (to another asset or out of src/), a FIFO, a directory
            raise AssetError(f"asset {ref} is not a regular file", status=403)
        return stamp_of(st)

    def read(self, ref: str, max_bytes: int) -> bytes:
        return self.read_stamped(ref, max_bytes)[0]

    def read_stamped(self, ref: str, max_bytes: int) -> tuple[bytes, Stamp]:
        """The verified bytes of ``ref`` and the identity of the file they were read from.

        One open descriptor serves the type check, the size check and the read (``O_NOFOLLOW | O_NONBLOCK``:
        a symlink or FIFO swapped in after a check is refused, not followed or waited on).
        """
        path = self.path_of(ref)
        expected = path.name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise AssetError(f"asset {ref} not found in {self.src}", status=404) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AssetError(f"asset {ref} is not a regular file", status=403) from None
            raise AssetError(f"asset {ref} cannot be read: {exc.strerror}", status=403) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AssetError(f"asset {ref} is not a regular file", status=403)
            if st.st_size > max_bytes:
                raise AssetError(f"asset {ref} is larger than the limit of {max_bytes} bytes", status=413)
            try:
                data = read_fd(fd, max_bytes)
            except ImageError:  # it grew past the limit while being read
                raise AssetError(f"asset {ref} is larger than the limit of {max_bytes} bytes", status=413) from None
            except OSError as exc:
                raise AssetError(f"asset {ref} cannot be read: {exc.strerror}", status=403) from None
        finally:
            os.close(fd)
        stamp = stamp_of(st)
        if self._verified.get(expected) != stamp:
            if hashlib.sha256(data).hexdigest() != expected:
                raise AssetError(f"asset {ref} failed verification: content does not match its hash", 409)
            self._verified[expected] = stamp
        return data, stamp

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
                try:
                    if not path.is_file():
                        continue
                    age = now - path.stat().st_mtime
                except FileNotFoundError:  # unlinked under the sweep (another process sweeping the same dir)
                    continue
                if age > max_age_s:
                    path.unlink(missing_ok=True)
                    removed += 1
                else:
                    kept += 1
        sources = sum(1 for _ in self.src.iterdir()) if self.src.is_dir() else 0
        return SweepResult(removed=removed, kept=kept, sources=sources)
