"""Running an aiohttp app as a loopback server process, shared by the simulated worker and the proxy.

Both need the same shell: uvloop when available, a runner without aiohttp's access log (each server logs one
line per request itself), SIGTERM/SIGINT as a clean stop, and start/stop hooks around the serving period. The
listening socket is created here, not by ``web.TCPSite``, so that aiohttp's own rejections (malformed request
lines and headers) answer in JSON too (``harness.server.openai.JsonErrorRequestHandler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from harness.server.openai import JsonErrorRequestHandler

#: Idle keep-alive connections (and connections that never complete their headers: aiohttp arms the same timer
#: when a connection opens) are closed after this many seconds. aiohttp's default is 3630 s. It stays above the
#: clients' own idle limits (aiohttp's connector 15 s, httpx 5 s) so a client never reuses a connection the
#: server is closing.
KEEPALIVE_TIMEOUT_S = 30.0
#: How long an unread request body is drained after the answer (aiohttp's default 10 s) before closing.
LINGERING_TIME_S = 2.0


class ContinuationFormatter(logging.Formatter):
    """Every line after the first of a record (a multi-line message, a traceback) is indented, so only the
    logger's header can start a line: client text that carries a newline cannot pose as a record of its own
    (``harness.contract`` parses records only at a line start)."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\n    ")


def configure_logging(level: str, tag: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ContinuationFormatter(f"%(asctime)s %(levelname)s [{tag}] %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    *,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT_S,
    lingering_time: float = LINGERING_TIME_S,
) -> asyncio.AbstractServer:
    """A listening socket for a set-up ``runner`` whose connections use ``JsonErrorRequestHandler``."""
    manager = runner.server
    if manager is None:
        raise RuntimeError("listen() needs runner.setup() first")
    loop = asyncio.get_running_loop()

    def protocol() -> JsonErrorRequestHandler:
        return JsonErrorRequestHandler(
            manager,
            loop=loop,
            access_log=None,  # type: ignore[arg-type]  # aiohttp disables the access log on None
            keepalive_timeout=keepalive_timeout,
            lingering_time=lingering_time,
        )

    return await loop.create_server(protocol, host, port, reuse_address=True)


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
    server = await listen(runner, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(stop)
    finally:
        server.close()
        await runner.cleanup()  # closes idle connections, waits for handlers in flight
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)
        await cleanup()


def run_main(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
