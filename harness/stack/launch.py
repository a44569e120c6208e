"""Run a case's launch script: ports, the environment contract, logs, readiness, phases and teardown.

The script runs in its own session, so the whole stack (script, workers, router) is one process group and is
ended with it — on pass, failure, timeout or Ctrl-C alike. Readiness is the script's ``HARNESS_READY url=``
line; a script that exits first fails at once with its last log lines, never after a timeout.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import contract as c
from harness.contract import parse_failed, parse_phases, parse_ready
from harness.profiles import Case, default_launch_dir
from harness.stack.ports import allocate_ports, port_is_free, release_ports
from harness.stack.processes import ManagedProcess, ProcessExitedError, spawn, tail, wait_until
from harness.stack.spec import StackSpec, resolve_spec


class LaunchError(RuntimeError):
    """A stack that did not come up. ``reason`` is one line (the script's ``HARNESS_FAILED`` reason, or why the
    wait ended); ``component`` names the part that failed (``launch`` when none is named) and ``log_tail`` is the
    end of its log: what a report shows instead of a traceback."""

    def __init__(self, message: str, *, reason: str = "", component: str = "launch", log_tail: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message.splitlines()[0]
        self.component = component
        self.log_tail = log_tail

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "component": self.component, "log_tail": self.log_tail}


@dataclass
class Stack:
    """A running stack of one case."""

    case: Case
    spec: StackSpec
    url: str
    proc: ManagedProcess
    log_dir: Path
    log_prefix: str
    worker_urls: list[str]
    ports: list[int]
    phases: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{self.log_prefix}{component}.log"

    @property
    def router_log(self) -> Path | None:
        path = self.log_path("router")
        return path if path.exists() else None

    def worker_logs(self) -> list[Path]:
        return [self.log_path(f"worker{i}") for i in range(len(self.worker_urls))]

    def log_tails(self, lines: int = 15) -> dict[str, str]:
        out = {"launch": self.proc.log_tail(lines)}
        for path in [*self.worker_logs(), self.log_path("router")]:
            if path.exists():
                out[path.stem.removeprefix(self.log_prefix)] = tail(path, lines)
        return out


def case_env(spec: StackSpec, ports: list[int], log_dir: Path, prefix: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The launch contract's environment (names in ``harness.contract``) for ``spec`` on ``ports``."""
    front, router_metrics, *workers = ports
    env = {
        **os.environ,
        c.ENV_MODEL: spec.model,
        c.ENV_BACKEND: spec.backend,
        c.ENV_NUM_WORKERS: str(spec.workers),
        c.ENV_HTTP_PORT: str(front),
        c.ENV_ROUTER_METRICS_PORT: str(router_metrics),
        c.ENV_WORKER_PORTS: " ".join(map(str, workers)),
        c.ENV_KV_CACHE_BYTES: str(spec.kv_cache_bytes),
        c.ENV_BLOCK_SIZE: str(spec.block_size),
        c.ENV_LOG_DIR: str(log_dir),
        c.ENV_LOG_PREFIX: prefix,
        c.ENV_ROUTER: spec.router,
        c.ENV_ROUTER_POLICY: spec.policy or "",
        c.ENV_PYTHON: sys.executable,
        c.ENV_MAX_MODEL_LEN: str(spec.max_model_len),
        c.ENV_READY_TIMEOUT: str(int(spec.timeout_s)),
        c.ENV_EXTRA_WORKER_ARGS: " ".join(spec.extra_worker_args),
        c.ENV_LIB_SH: str(default_launch_dir() / "lib.sh"),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1" if spec.backend == "sim" else "0"),
        "PYTHONUNBUFFERED": "1",
    }
    if spec.family:
        env[c.ENV_MM_FAMILY] = spec.family
    if spec.kv_events:
        env[c.ENV_KV_EVENTS] = "1"
    env.setdefault("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "0"))
    env.update(spec.env)
    env.update(extra)
    return env


def start_stack(
    case: Case,
    log_dir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    launch_dir: Path | None = None,
    timeout_s: float | None = None,
    port: int | None = None,
) -> Stack:
    """Boot ``case``; ``port`` fixes the front door's port (``harness stack up --port``), else one is allocated."""
    spec = resolve_spec(case, os.environ)
    script = (launch_dir or default_launch_dir()) / spec.script
    if not script.is_file():
        raise LaunchError(f"{case.id}: launch script {script} does not exist")
    if port is not None and not port_is_free(port):
        raise LaunchError(f"{case.id}: port {port} is in use on 127.0.0.1")
    ports = allocate_ports(2 + spec.workers)
    if port is not None:
        release_ports(ports[:1])
        ports[0] = port
    try:
        prefix = f"{case.id}."
        env = case_env(spec, ports, log_dir, prefix, extra_env or {})
        proc = spawn(f"{case.id}/launch", ["bash", str(script)], log_dir / f"{prefix}launch.log", env=env)
    except BaseException:
        release_ports(ports)
        raise
    workers = [f"http://127.0.0.1:{p}" for p in ports[2:]]
    stack = Stack(case, spec, "", proc, log_dir, prefix, workers, ports, env=env)
    deadline = timeout_s if timeout_s is not None else spec.timeout_s
    try:

        def ready() -> bool:
            # This boot's lines only: the launch log is appended to, and a relaunch of the same case id in the same
            # log directory must not connect to the last boot's (dead) ports.
            url = parse_ready(proc.log_text())
            if url:
                stack.url = url
            return url is not None

        wait_until(ready, deadline, interval_s=0.05, procs=[proc], what=f"{case.id} to print HARNESS_READY")
        boot_log = proc.log_text()
        stack.phases = parse_phases(boot_log)
        stack.worker_urls = c.parse_workers(boot_log) or stack.worker_urls  # a script that chose its own
    except (ProcessExitedError, TimeoutError) as exc:
        text = proc.log_text()
        failed = parse_failed(text)
        stop_stack(stack)
        reason = failed or str(exc).splitlines()[0]
        tails = stack.log_tails(40)
        component = failing_component(reason, tails)
        raise LaunchError(
            f"{case.id}: stack did not come up: {reason}\n{_tails(stack)}",
            reason=reason,
            component=component,
            log_tail=tails.get(component, ""),
        ) from None
    except BaseException:
        # Anything else that ends the wait (Ctrl-C, SIGTERM as KeyboardInterrupt, pytest-timeout's exception)
        # must not leave a half-booted stack running until pytest exits: nobody else holds it yet.
        stop_stack(stack)
        raise
    return stack


def failing_component(reason: str, tails: Mapping[str, str]) -> str:
    """The component a failure reason names (lib.sh's ``die`` reasons start with it, e.g. ``worker1 exited with
    code 7 ...``), if it has a log; else ``launch``, the script's own log."""
    words = reason.replace(":", " ").split()
    first = words[0] if words else ""
    return first if first in tails else "launch"


def _tails(stack: Stack) -> str:
    return "\n".join(f"--- {name} ---\n{text}" for name, text in stack.log_tails().items() if text)


def stop_stack(stack: Stack, grace_s: float = 5.0) -> float:
    t0 = time.monotonic()
    try:
        stack.proc.terminate(grace_s)
    finally:
        release_ports(stack.ports)
    return time.monotonic() - t0


@contextmanager
def launched(case: Case, log_dir: Path, **kw: Any) -> Iterator[Stack]:
    """A running stack for the with-block, torn down however the block ends. A boot that is cut short (Ctrl-C,
    SIGTERM, a pytest-timeout) is torn down by ``start_stack`` itself."""
    stack = start_stack(case, log_dir, **kw)
    try:
        yield stack
    finally:
        stack.phases["teardown"] = stop_stack(stack)
