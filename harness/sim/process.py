"""Start simulated workers as real processes on loopback: launch all (phase 1), then wait for all (phase 2)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.stack.ports import allocate_ports, release_ports
from harness.stack.processes import ManagedProcess, spawn, wait_http_ready


@dataclass
class WorkerHandle:
    name: str
    port: int
    proc: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def worker_argv(model: str, port: int, name: str, extra: Sequence[str] = ()) -> list[str]:
    """The command line of a simulated worker, reporting cached tokens as the launch scripts configure vLLM."""
    return [
        sys.executable,
        "-m",
        "harness.sim.worker",
        "--model",
        model,
        "--port",
        str(port),
        "--worker-name",
        name,
        "--enable-prompt-tokens-details",
        *extra,
    ]


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONHASHSEED", "0")
    env.update(extra or {})
    return env


def start_workers(
    n: int,
    model: str,
    log_dir: Path,
    extra_args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 30.0,
    wait: bool = True,
    name_prefix: str = "worker",
) -> list[WorkerHandle]:
    ports = allocate_ports(n)
    handles = []
    try:
        for i, port in enumerate(ports):
            name = f"{name_prefix}{i}"
            proc = spawn(name, worker_argv(model, port, name, extra_args), log_dir / f"{name}.log", env=worker_env(env))
            handles.append(WorkerHandle(name, port, proc))
        if wait:
            for h in handles:
                wait_http_ready(f"{h.url}/health", h.proc, ready_timeout_s)
    except BaseException:
        stop_workers(handles)
        raise
    return handles


def stop_workers(handles: Sequence[WorkerHandle]) -> None:
    for h in handles:
        h.proc.terminate()
    release_ports([h.port for h in handles])


@contextmanager
def running_workers(
    n: int, model: str, log_dir: Path, extra_args: Sequence[str] = (), **kw
) -> Iterator[list[WorkerHandle]]:
    handles = start_workers(n, model, log_dir, extra_args, **kw)
    try:
        yield handles
    finally:
        stop_workers(handles)
