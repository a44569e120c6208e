"""Shared fixtures: generated images, a loopback image server and simulated workers as real processes."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.sim.process import WorkerHandle, start_workers, stop_workers
from tests.helpers import MODEL

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub


class ImageServer:
    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port

    def add(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    root = tmp_path_factory.mktemp("images")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(root, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


WorkerFactory = Callable[..., list[WorkerHandle]]


@pytest.fixture
def sim_workers(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Factory: ``sim_workers(n, *extra_args, model=MODEL, wait=True)``; all are torn down after the test."""
    started: list[WorkerHandle] = []

    def factory(n: int = 1, *extra: str, model: str = MODEL, wait: bool = True, **kw) -> list[WorkerHandle]:
        handles = start_workers(n, model, tmp_path / "logs", extra, wait=wait, name_prefix=f"w{len(started)}-", **kw)
        started.extend(handles)
        return handles

    yield factory
    stop_workers(started)
