"""The proxy's HTTP surface and entry point: ``python -m harness.proxy --model NAME --workers URL... --port P``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from harness.contract import escape_log
from harness.mm.geometry import GeometryNotFoundError
from harness.proxy.config import ProxyConfig, parse_args
from harness.proxy.service import ClientGone, Inbound, Proxy
from harness.server.app import configure_logging, run_main, serve_app
from harness.server.openai import (
    MAX_BODY_BYTES,
    QUIET_PATHS,
    REQUEST_ID_HEADER,
    api_middleware,
    json_response,
    model_card,
)

log = logging.getLogger("harness.proxy")

PROXY = web.AppKey("proxy", Proxy)


def _finished(proxy: Proxy, request: web.Request, status: int, seconds: float) -> None:
    if request.path in QUIET_PATHS:
        return
    proxy.metrics.child(proxy.metrics.requests, str(status)).inc()
    if not proxy.cfg.disable_log_requests:
        s = request["stats"]
        log.info(
            "request_id=%s %s %s status=%d worker=%s prompt_tokens=%s latency_ms=%.2f",
            request["rid"],
            escape_log(request.method),
            escape_log(request.path),
            status,
            s.get("worker", "-"),
            s.get("prompt_tokens", "-"),
            seconds * 1e3,
        )


class ResponseSink:
    """The service's ``Sink`` over an aiohttp ``StreamResponse``: a client that hung up is ``ClientGone``."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response: web.StreamResponse | None = None

    async def open(self, status: int, headers: Mapping[str, str]) -> None:
        self.response = web.StreamResponse(status=status, headers=headers)
        try:
            await self.response.prepare(self.request)
        except ConnectionResetError:
            raise ClientGone from None

    async def send(self, chunk: bytes) -> None:
        assert self.response is not None
        try:
            await self.response.write(chunk)
        except ConnectionResetError:
            raise ClientGone from None

    async def finish(self) -> None:
        assert self.response is not None
        try:
            await self.response.write_eof()
        except (ConnectionResetError, RuntimeError):  # RuntimeError: the transport is already closed
            raise ClientGone from None


async def _generate(request: web.Request, chat: bool) -> web.StreamResponse:
    inbound = Inbound(
        path=request.path,
        body=await request.read(),
        rid=request["rid"],
        chat=chat,
        authorization=request.headers.get("Authorization"),
        stats=request["stats"],
    )
    sink = ResponseSink(request)
    reply = await request.app[PROXY].generate(inbound, sink)
    if reply is None:
        assert sink.response is not None
        return sink.response
    return web.Response(body=reply.body, status=reply.status, headers=reply.headers)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def health(request: web.Request) -> web.Response:
    """200 while some worker passes health checks (even one whose breaker is open: it is a last resort)."""
    if not any(w.health.up for w in request.app[PROXY].workers):
        return web.Response(status=503, text="no healthy worker")
    return web.Response(status=200)


async def models(request: web.Request) -> web.Response:
    """vLLM's model list: the base model and every adapter the proxy can serve (loaded on demand)."""
    proxy = request.app[PROXY]

    cards = [model_card(proxy.cfg.model, proxy.cfg.model, None, proxy.created, None)]
    cards += [
        model_card(name, str(path), proxy.cfg.model, proxy.created, None)
        for name, path in proxy.catalog.available().items()
    ]
    return json_response({"object": "list", "data": cards})


async def workers_view(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    return json_response(
        [
            {
                "name": w.name,
                "url": w.url,
                "healthy": w.healthy,
                "state": w.health.state,
                "probe_failures": w.health.probe_failures,
                "request_failures": w.health.request_failures,
                "running": w.running,
                "active_prefill_tokens": w.active_prefill_tokens,
                "predicted_blocks": len(w.predicted),
                "pending_blocks": w.predicted.pending,
                "event_blocks": len(w.events.blocks) if w.events else None,
                "adapters": dict(w.adapters),
            }
            for w in proxy.workers
        ]
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(request.app[PROXY].metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def build_app(proxy: Proxy) -> web.Application:
    middleware = api_middleware(
        log,
        headers=lambda rid: {REQUEST_ID_HEADER: rid},
        finished=lambda request, status, seconds: _finished(proxy, request, status, seconds),
    )
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY_BYTES)
    app[PROXY] = proxy
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/workers", workers_view)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(cfg: ProxyConfig) -> int:
    proxy = Proxy(cfg)

    async def run(stop: asyncio.Event) -> None:
        await proxy.start()
        log.info("proxy listening on http://%s:%d", cfg.host, cfg.port)
        await stop.wait()

    await serve_app(build_app(proxy), cfg.host, cfg.port, run=run, cleanup=proxy.stop)
    log.info("proxy stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    configure_logging(cfg.log_level, "proxy")
    try:
        return run_main(serve(cfg))
    except (GeometryNotFoundError, ValueError) as exc:
        log.error("proxy cannot start: %s", exc)
        return 2
