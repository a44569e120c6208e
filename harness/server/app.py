"""Running an aiohttp app as a loopback server process, shared by the simulated worker and the proxy.

Both need the same shell: uvloop when available, a runner without aiohttp's access log (each server logs one
line per request itself), SIGTERM/SIGINT as a clean stop, and start/stop hooks around the serving period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web


def configure_logging(level: str, tag: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=f"%(asctime)s %(levelname)s [{tag}] %(message)s",
        stream=sys.stderr,
    )


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    run: Callable[[asyncio.Event], Awaitable[None]],
    cleanup: Callable[[], Awaitable[None]],
) -> None:
    """Listen on ``host:port``, then await ``run(stop)`` — which returns when ``stop`` is set by a signal or
    when it decides to end — and finally tear down the listener and call ``cleanup``."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(stop)
    finally:
        await runner.cleanup()
        await cleanup()


def run_main(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
