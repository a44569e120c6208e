"""The launch and routing contract: every line one component writes and another parses, in one place.

Each line has one formatter and one parser here, unit-tested as a pair, so a writer and its reader cannot drift
apart. Shell launch scripts write the launch lines through ``lib.sh`` (``phase``, ``die``, ``serve``); their
output is tested against the parsers below. The environment variables a launch script reads are named here too.

Lines:

- ``HARNESS_READY url=<front door>``: the stack serves (the launch script's last start-up line).
- ``HARNESS_PHASE name=<phase> seconds=<s>``: one per start-up phase, for the case record.
- ``HARNESS_FAILED <reason>``: start-up failed; the reason names the component.
- ``HARNESS_WORKERS urls=<url>[,<url>...]``: optional, before the ready line: the workers' own URLs, when the
  script chose them itself (an attached stack, ports of its own) rather than taking ``HARNESS_WORKER_PORTS``.
- ``HARNESS_SERVED_MODEL path=<dir>``: optional: the model directory the stack serves ``HARNESS_MODEL`` from (a
  start-up line may name it instead of the model id).
- ``[ROUTING] request_id=<id> worker=<name> overlap_blocks=<x> total_blocks=<m> policy=<p>``: one routing
  decision (Dynamo's ``[ROUTING] Best: worker_<id> ... with <x>/<m> blocks overlap ... x_request_id="<id>"`` is
  parsed too).
- ``MM-aware KV routing enabled model=<m> block_size=<b>``: at router start-up, when images enter the key.
- ``[LORA] cold load request_id=<id> adapter=<name> ... worker=<w> ...``: an adapter loaded on demand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# -- the environment of a launch script -------------------------------------------------------------------------
ENV_MODEL = "HARNESS_MODEL"
ENV_BACKEND = "HARNESS_BACKEND"
ENV_NUM_WORKERS = "HARNESS_NUM_WORKERS"
ENV_HTTP_PORT = "HARNESS_HTTP_PORT"
ENV_ROUTER_METRICS_PORT = "HARNESS_ROUTER_METRICS_PORT"
ENV_WORKER_PORTS = "HARNESS_WORKER_PORTS"
ENV_KV_CACHE_BYTES = "HARNESS_KV_CACHE_BYTES"
ENV_LOG_DIR = "HARNESS_LOG_DIR"
ENV_LOG_PREFIX = "HARNESS_LOG_PREFIX"
ENV_ROUTER = "HARNESS_ROUTER"
ENV_ROUTER_POLICY = "HARNESS_ROUTER_POLICY"
ENV_BLOCK_SIZE = "HARNESS_BLOCK_SIZE"
ENV_PYTHON = "HARNESS_PYTHON"
ENV_MAX_MODEL_LEN = "HARNESS_MAX_MODEL_LEN"
ENV_READY_TIMEOUT = "HARNESS_READY_TIMEOUT"
ENV_EXTRA_WORKER_ARGS = "HARNESS_EXTRA_WORKER_ARGS"
ENV_MM_FAMILY = "HARNESS_MM_FAMILY"
ENV_ADAPTER_DIR = "HARNESS_ADAPTER_DIR"
ENV_LIB_SH = "HARNESS_LIB_SH"
#: ``1``: the workers publish KV-cache events (vLLM's ``--kv-events-config``, ZMQ) and the router consumes them.
ENV_KV_EVENTS = "HARNESS_KV_EVENTS"
#: An attached stack (``url.sh``, ``harness run --url``): its front door, its workers, the router's log file.
ENV_URL = "HARNESS_URL"
ENV_URL_WORKERS = "HARNESS_URL_WORKERS"
ENV_URL_ROUTER_LOG = "HARNESS_URL_ROUTER_LOG"
#: ``--allowed-media-hosts`` entries (space-separated) for the stack: the runner's image server as ``host:port``.
ENV_MEDIA_HOSTS = "HARNESS_MEDIA_HOSTS"

# -- launch lines -----------------------------------------------------------------------------------------------
_READY_RE = re.compile(r"^HARNESS_READY url=(\S+)$", re.M)
_PHASE_RE = re.compile(r"^HARNESS_PHASE name=(\S+) seconds=([0-9.]+)$", re.M)
_FAILED_RE = re.compile(r"^HARNESS_FAILED (.*)$", re.M)


def format_ready(url: str) -> str:
    return f"HARNESS_READY url={url}"


def parse_ready(text: str) -> str | None:
    """The front door's URL, once the script has printed its ready line."""
    m = _READY_RE.search(text)
    return m.group(1) if m else None


def format_phase(name: str, seconds: float) -> str:
    return f"HARNESS_PHASE name={name} seconds={seconds:.3f}"


def parse_phases(text: str) -> dict[str, float]:
    return {name: float(sec) for name, sec in _PHASE_RE.findall(text)}


def format_failed(reason: str) -> str:
    return "HARNESS_FAILED " + " ".join(reason.split())


def parse_failed(text: str) -> str | None:
    m = _FAILED_RE.search(text)
    return m.group(1) if m else None


_WORKERS_RE = re.compile(r"^HARNESS_WORKERS urls=(\S+)$", re.M)


_SERVED_MODEL_RE = re.compile(r"^HARNESS_SERVED_MODEL path=(\S+)$", re.M)


def format_served_model(path: str) -> str:
    """A launch script that serves the model from a directory it wrote (Dynamo's no-weights model) says where, so
    a start-up line naming that directory names the served model."""
    return f"HARNESS_SERVED_MODEL path={path}"


def parse_served_models(text: str) -> list[str]:
    return _SERVED_MODEL_RE.findall(text)


def format_workers(urls: list[str]) -> str:
    return "HARNESS_WORKERS urls=" + ",".join(urls)


def parse_workers(text: str) -> list[str] | None:
    """The worker URLs a script announced (the last announcement wins), None when it announced none."""
    found = _WORKERS_RE.findall(text)
    return [u for u in found[-1].split(",") if u] if found else None


# -- client text in log lines -----------------------------------------------------------------------------------
def escape_log(text: object, limit: int = 256) -> str:
    """Client-controlled text made safe for a log line: printable ASCII other than space and ``%`` stays, every
    other character becomes ``%XX`` of its UTF-8 bytes, and the result is cut at ``limit`` characters.

    A request path such as ``/x%0A[ROUTING]%20request_id=...`` would otherwise write a forged routing record
    on a line of its own; with no newline and no space left, client text cannot start a line or look like a
    ``key=value`` sequence of a record. Every server logs request paths, methods and URLs through this.
    """
    s = str(text)
    cut = len(s) > limit
    if cut:
        s = s[:limit]
    if not (s.isascii() and s.isprintable() and " " not in s and "%" not in s):
        s = "".join(
            ch if "!" <= ch <= "~" and ch != "%" else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
            for ch in s
        )
    return s + "..." if cut else s


# -- routing records --------------------------------------------------------------------------------------------
RecordFormat = Literal["harness", "dynamo"]

#: The headers a component's logger writes before a record: ``harness.server.app.configure_logging``'s
#: ``%(asctime)s %(levelname)s [tag] `` and logging's ``... LEVEL name: `` form. Nothing in them is client text.
_PY_HEADER = r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d{3} [A-Z]+ (?:\[[^\]\s]*\]|[\w.]+:) )?"
#: The harness's record: the whole line, from the logger's header (or the line start) to the line end, so a
#: record embedded in client text inside another line (a logged path, an error message) is no record.
_HARNESS_RE = re.compile(
    _PY_HEADER + r"\[ROUTING\] request_id=(?P<rid>\S+) worker=(?P<worker>\S+) overlap_blocks=(?P<overlap>\d+) "
    r"total_blocks=(?P<total>\d+) policy=(?P<policy>\S+)"
)
#: Dynamo 1.6.1's record, as its frontend logs it at DEBUG (``DYN_LOG=debug``; colours off with
#: ``DYN_SDK_DISABLE_ANSI_LOGGING=1``), from ``dynamo_llm::kv_router::routing_host::kv_selection``:
#:   ``<ts>Z DEBUG http-request:kv_router.select_worker: dynamo_llm::kv_router::routing_host::kv_selection:
#:   [ROUTING] Best: worker_<id> dp_rank=0 with 0/21 blocks overlap request_id=<dynamo id> worker_id=<id>
#:   dp_rank=0 overlap_blocks=0 total_blocks=21 method=POST uri=/v1/chat/completions version=HTTP/1.1
#:   x_request_id="<the client's X-Request-Id>" request_id=<span id> model="..."``
#: Tracing writes the span *names* before the message and the span *fields* after it, so client text (the
#: ``x_request_id`` and ``uri`` fields) only ever follows the record: the record is the message that directly
#: follows the header, span names and target (or starts the line). The ``request_id`` right after the record is
#: Dynamo's own id (its ``chatcmpl-`` suffix); the client's id is the first ``x_request_id="..."`` field after
#: the message, a Debug-quoted string (quotes inside it are escaped, so a client cannot close it early).
_DYNAMO_RE = re.compile(
    r"(?:\d{4}-\d\d-\d\dT[\d:.]+Z? +[A-Z]+ +(?:[\w.:-]+: )*)?"
    r"\[ROUTING\] Best: (?P<worker>worker_\d+)(?: dp_rank=\d+)? with (?P<overlap>\d+)/(?P<total>\d+) blocks overlap"
    r"(?P<rest>(?: .*)?)"
)
_X_REQUEST_ID_RE = re.compile(r' x_request_id="(?P<rid>(?:[^"\\]|\\.)*)"')
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class RoutingRecord:
    request_id: str | None
    worker: str
    overlap_blocks: int
    total_blocks: int
    policy: str | None
    format: RecordFormat

    @property
    def overlap_ratio(self) -> float:
        return self.overlap_blocks / self.total_blocks if self.total_blocks else 0.0


def format_routing(request_id: str, worker: str, overlap_blocks: int, total_blocks: int, policy: str) -> str:
    return (
        f"[ROUTING] request_id={request_id} worker={worker} overlap_blocks={overlap_blocks} "
        f"total_blocks={total_blocks} policy={policy}"
    )


def parse_routing_line(line: str) -> RoutingRecord | None:
    """One record, only when the line is the component's own record line (see ``_HARNESS_RE``, ``_DYNAMO_RE``).

    A Dynamo record's ``request_id`` is the client's ``X-Request-Id`` (the ``x_request_id`` span field), None
    when the client sent none: Dynamo's own ids never match a request the gate sent.
    """
    if "[ROUTING]" not in line:
        return None
    if "\x1b" in line:
        line = _ANSI_RE.sub("", line)
    m = _HARNESS_RE.fullmatch(line)
    if m:
        return RoutingRecord(m["rid"], m["worker"], int(m["overlap"]), int(m["total"]), m["policy"], "harness")
    m = _DYNAMO_RE.fullmatch(line)
    if m:
        rid = _X_REQUEST_ID_RE.search(m["rest"])
        request_id = rid["rid"].replace('\\"', '"').replace("\\\\", "\\") if rid else None
        return RoutingRecord(request_id, m["worker"], int(m["overlap"]), int(m["total"]), None, "dynamo")
    return None


def parse_routing_records(text: str) -> list[RoutingRecord]:
    """Every routing record in a log, as numbers (checks compare ``19 < 20``, never digit strings)."""
    return [r for r in map(parse_routing_line, text.splitlines()) if r is not None]


def records_for(text: str, request_id: str) -> list[RoutingRecord]:
    """The records of one request only; other requests' decisions never leak into a check."""
    return [r for r in parse_routing_records(text) if r.request_id == request_id]


# -- the multimodal-aware start-up line -------------------------------------------------------------------------
_STARTUP_RE = re.compile(r"MM-aware KV routing enabled model=(?P<model>\S+)(?: block_size=(?P<block_size>\d+))?")


@dataclass(frozen=True)
class StartupLine:
    model: str
    block_size: int | None


def format_mm_startup(model: str, block_size: int) -> str:
    return f"MM-aware KV routing enabled model={model} block_size={block_size}"


def parse_mm_startup(text: str) -> StartupLine | None:
    m = _STARTUP_RE.search(text)
    if m is None:
        return None
    return StartupLine(m["model"], int(m["block_size"]) if m["block_size"] else None)


# -- LoRA cold loads --------------------------------------------------------------------------------------------
_LORA_COLD_RE = re.compile(
    r"\[LORA\] cold load request_id=(?P<rid>\S+) adapter=(?P<adapter>\S+) identity=(?P<identity>\S+) "
    r"worker=(?P<worker>\S+)"
)


@dataclass(frozen=True)
class LoraColdLoad:
    request_id: str
    adapter: str
    identity: str
    worker: str


def format_lora_cold_load(
    request_id: str, adapter: str, identity: str, worker: str, resolve_ms: float, validate_ms: float, load_ms: float
) -> str:
    return (
        f"[LORA] cold load request_id={request_id} adapter={adapter} identity={identity} worker={worker} "
        f"resolve_ms={resolve_ms:.2f} validate_ms={validate_ms:.2f} load_ms={load_ms:.2f}"
    )


def parse_lora_cold_loads(text: str) -> list[LoraColdLoad]:
    return [
        LoraColdLoad(m["rid"], m["adapter"], m["identity"], m["worker"])
        for m in map(_LORA_COLD_RE.search, text.splitlines())
        if m is not None
    ]
