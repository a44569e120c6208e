"""The launch and routing contract: every line one component writes and another parses, in one place.

Each line has one formatter and one parser here, unit-tested as a pair, so a writer and its reader cannot drift
apart. Shell launch scripts write the launch lines through ``lib.sh`` (``phase``, ``die``, ``serve``); their
output is tested against the parsers below. The environment variables a launch script reads are named here too.

Lines:

- ``HARNESS_READY url=<front door>``: the stack serves (the launch script's last start-up line).
- ``HARNESS_PHASE name=<phase> seconds=<s>``: one per start-up phase, for the case record.
- ``HARNESS_FAILED <reason>``: start-up failed; the reason names the component.
- ``[ROUTING] request_id=<id> worker=<name> overlap_blocks=<x> total_blocks=<m> policy=<p>``: one routing
  decision (Dynamo's ``[ROUTING] Best: worker_<id> ... with <x>/<m> blocks overlap`` is parsed too).
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


# -- routing records --------------------------------------------------------------------------------------------
RecordFormat = Literal["harness", "dynamo"]

#: The harness's record, anchored at the end of the line: nothing client-controlled may follow it.
_HARNESS_RE = re.compile(
    r"\[ROUTING\] request_id=(?P<rid>\S+) worker=(?P<worker>\S+) overlap_blocks=(?P<overlap>\d+) "
    r"total_blocks=(?P<total>\d+) policy=(?P<policy>\S+)$"
)
#: ``[ROUTING] Best: worker_<id> dp_rank=0 with 19/20 blocks overlap request_id=<id> ...``
_DYNAMO_RE = re.compile(
    r"\[ROUTING\] Best: (?P<worker>worker_\S+)(?: dp_rank=\S+)? with (?P<overlap>\d+)/(?P<total>\d+) blocks overlap"
    r"(?:.*?request_id=(?P<rid>[^\s,]+))?"
)


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
    if "[ROUTING]" not in line:
        return None
    m = _HARNESS_RE.search(line)
    if m:
        return RoutingRecord(m["rid"], m["worker"], int(m["overlap"]), int(m["total"]), m["policy"], "harness")
    m = _DYNAMO_RE.search(line)
    if m:
        return RoutingRecord(m["rid"], m["worker"], int(m["overlap"]), int(m["total"]), None, "dynamo")
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
