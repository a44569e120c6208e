"""Shared fixtures: generated images, a loopback image server and simulated workers as real processes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.gate.image_server import ImageServer
from harness.sim.process import WorkerHandle, start_workers, stop_workers
from tests.helpers import MODEL

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub


@pytest.fixture(scope="session")
def image_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    with ImageServer(tmp_path_factory.mktemp("images")) as server:
        yield server


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
