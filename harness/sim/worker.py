"""The simulated vLLM worker: ``python -m harness.sim.worker --model NAME --port P [...]``.

An aiohttp server (``api.py``) over the service layer (``service.py``): the engine schedules requests against a
paged KV cache with vLLM's prefix-caching rules, and the handlers speak vLLM's OpenAI-compatible API.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

from harness.mm.geometry import GeometryNotFoundError
from harness.server.app import configure_logging, run_main, serve_app
from harness.sim.api import build_app
from harness.sim.config import WorkerConfig, parse_args
from harness.sim.service import SimWorker, StartupError

log = logging.getLogger("harness.sim.worker")


async def serve(cfg: WorkerConfig) -> int:
    worker = SimWorker(cfg)
    rc = 0

    async def run(stop: asyncio.Event) -> None:
        nonlocal rc
        log.info("worker %s listening on http://%s:%d (starting)", cfg.name, cfg.host, cfg.port)
        startup = asyncio.create_task(worker.startup())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({startup, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if startup not in done:
            startup.cancel()
            return
        try:
            startup.result()
        except StartupError as exc:
            log.error("worker %s failed to start: %s", cfg.name, exc)
            rc = 1
            return
        await stopped

    await serve_app(build_app(worker), cfg.host, cfg.port, run=run, cleanup=worker.shutdown)
    log.info("worker %s stopped", cfg.name)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    configure_logging(cfg.log_level, cfg.name)
    try:
        return run_main(serve(cfg))
    except (GeometryNotFoundError, StartupError, ValueError) as exc:
        log.error("worker %s cannot start: %s", cfg.name, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
