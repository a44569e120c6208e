"""tests/unit is pure: no test here starts a process. Anything that would (subprocess, asyncio subprocesses,
multiprocessing, os.fork/posix_spawn/system) fails the test with a pointer to tests/e2e, so ``pytest tests/unit``
stays fast and cannot leave anything behind; tests that need processes live in tests/e2e, marked ``e2e``."""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
from typing import NoReturn

import pytest

MESSAGE = "tests/unit starts no process: move this test to tests/e2e (pytestmark = pytest.mark.e2e)"


def _refuse(*_args: object, **_kwargs: object) -> NoReturn:
    raise AssertionError(MESSAGE)


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse)  # subprocess.*, asyncio subprocesses
    monkeypatch.setattr(_posixsubprocess, "fork_exec", _refuse)  # multiprocessing's spawn/forkserver
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "popen", "spawnv", "spawnve"):
        monkeypatch.setattr(os, name, _refuse, raising=False)
