"""Shared fixtures: generated images, a loopback image server and simulated workers as real processes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.gate.image_server import ImageServer
from harness.sim.process import WorkerHandle, start_workers, stop_workers
from tests.helpers import MODEL

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub

# A shell starting a job in the background without job control hands it SIGINT ignored, and an ignored signal stays
# ignored across exec: every process the tests start would then shrug off the Ctrl-C the interrupt tests send.
# A handled signal resets to its default on exec, so handling it here gives children the disposition a terminal
# would; pytest itself then still stops on Ctrl-C.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
