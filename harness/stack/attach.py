"""URL mode: gate a stack that is already running, with what its router lets the gate observe given by hand.

``harness run --url URL [--worker-url URL ...] [--model M] [--records dynamo] [--attribution nvext] ...`` builds
one synthetic case here; its launch script (``url.sh``) starts nothing: it waits for the front door, mirrors the
router's log file if one is named, announces the workers' URLs and stays up while the front door answers. The
gate then runs unchanged. The capabilities come from the command line because a running stack cannot be asked
what it is (and a threshold taken from the system under test would be no gate).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import get_args

import httpx

from harness import contract as c
from harness.profiles import (
    PAYLOADS,
    AttributionSource,
    Case,
    Expect,
    ModelProfile,
    Payload,
    RecordFormat,
    RouterCapabilities,
    Topology,
)

RECORD_FORMATS: tuple[str, ...] = (*get_args(RecordFormat), "none")
ATTRIBUTION_SOURCES: tuple[str, ...] = get_args(AttributionSource)


class AttachError(ValueError):
    """A URL-mode option that cannot describe a stack; the message names the option."""


@dataclass(frozen=True)
class AttachSpec:
    """What ``harness run --url`` was told about the running stack."""

    url: str
    worker_urls: tuple[str, ...] = ()
    model: str | None = None
    family: str | None = None
    records: str = "none"
    startup_line: bool = False
    attribution: tuple[str, ...] = ("header", "metrics")
    served_by_header: str = "X-Served-By"
    engine_sees_images: bool = True
    engine_text: bool = True
    workers_serve_openai: bool = True
    worker_metrics: bool = True
    router_log: str | None = None
    block_size: int = 16
    payload: str = "image_url"
    expect: str = "pass"
    workers: int | None = None
    timeout_s: float = 60.0
    extra: dict[str, str] = field(default_factory=dict)


def _check_url(option: str, url: str) -> str:
    if not re.match(r"^https?://[^/\s]+", url):
        raise AttachError(f"{option}: {url!r} is not an http(s) URL")
    return url.rstrip("/")


def parse_attribution(values: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """``header[:NAME]``, ``nvext``, ``metrics`` (comma-separated or repeated) -> sources in order, header name."""
    sources: list[str] = []
    header = "X-Served-By"
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            kind, _, arg = item.partition(":")
            if kind not in ATTRIBUTION_SOURCES:
                raise AttachError(f"--attribution: {item!r} is not one of {', '.join(ATTRIBUTION_SOURCES)}")
            if kind == "header" and arg:
                header = arg
            sources.append(kind)
    if not sources:
        raise AttachError("--attribution: name at least one source")
    return tuple(dict.fromkeys(sources)), header


def capabilities_of(spec: AttachSpec) -> RouterCapabilities:
    if spec.records not in RECORD_FORMATS:
        raise AttachError(f"--records: {spec.records!r} is not one of {', '.join(RECORD_FORMATS)}")
    return RouterCapabilities(
        records=None if spec.records == "none" else spec.records,  # type: ignore[arg-type]
        startup_line=spec.startup_line,
        attribution=spec.attribution,  # type: ignore[arg-type]
        served_by_header=spec.served_by_header,
        engine_sees_images=spec.engine_sees_images,
        engine_text=spec.engine_text,
        workers_serve_openai=spec.workers_serve_openai,
        worker_metrics=spec.worker_metrics,
    )


def short_name(model: str) -> str:
    """A case-id-safe short name for a model id (``Qwen/Qwen3-VL-2B-Instruct`` -> ``qwen3-vl-2b-instruct``)."""
    tail = model.rstrip("/").rsplit("/", 1)[-1].lower()
    return re.sub(r"[^a-z0-9.]+", "-", tail).strip("-") or "model"


def url_case(spec: AttachSpec) -> Case:
    """The one case URL mode runs (id ``mm_url_<model>``): the stack at ``spec.url`` through ``url.sh``."""
    url = _check_url("--url", spec.url)
    workers = tuple(_check_url("--worker-url", w) for w in spec.worker_urls)
    if not spec.model:
        raise AttachError("--model: no model named (and none discovered from the stack's /v1/models)")
    if spec.payload not in PAYLOADS:
        raise AttachError(f"--payload: {spec.payload!r} is not one of {', '.join(PAYLOADS)}")
    if spec.expect not in get_args(Expect):
        raise AttachError(f"--expect: {spec.expect!r} is not 'pass' or 'fail'")
    if spec.workers is not None and workers and spec.workers != len(workers):
        raise AttachError(f"--workers: {spec.workers} does not match the {len(workers)} --worker-url given")
    count = spec.workers or len(workers) or 1
    if count < 1 or spec.block_size < 1:
        raise AttachError("--workers and --block-size must be at least 1")
    env = {c.ENV_URL: url, c.ENV_URL_WORKERS: " ".join(workers), c.ENV_URL_ROUTER_LOG: spec.router_log or "",
           **spec.extra}
    topology = Topology(
        "url",
        "url.sh",
        workers=count,
        router="url",
        block_size=spec.block_size,
        timeout_s=spec.timeout_s,
        env=env,
        expect=spec.expect,  # type: ignore[arg-type]
        capabilities=capabilities_of(spec),
    )
    model = ModelProfile(spec.model, short_name(spec.model), family=spec.family)
    payload: Payload = spec.payload  # type: ignore[assignment]
    return Case(model, topology, payload=payload)


def discover_model(url: str, timeout_s: float = 10.0) -> str:
    """The first model the stack lists at ``/v1/models`` (URL mode's default for ``--model``)."""
    url = _check_url("--url", url)
    try:
        r = httpx.get(f"{url}/v1/models", timeout=timeout_s)
        r.raise_for_status()
        data = r.json()["data"]
        return str(data[0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise AttachError(f"--model: cannot discover a model from {url}/v1/models ({exc}); name one") from None


def _flag(key: str, value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise AttachError(f"--{key.replace('_', '-')}: {value!r} is not a yes/no value")


def spec_from_options(url: str, worker_urls: Sequence[str], model: str | None, pairs: Sequence[str]) -> AttachSpec:
    """An ``AttachSpec`` from the plugin's options: ``--harness-url``, ``--harness-worker-url``,
    ``--harness-model`` and ``--harness-attach KEY=VALUE`` for the rest (``records``, ``startup_line``,
    ``attribution``, ``engine_sees_images``, ``engine_text``, ``workers_serve_openai``, ``worker_metrics``,
    ``router_log``,
    ``block_size``, ``family``, ``payload``, ``expect``, ``workers``, ``timeout_s``). ``harness run --url`` writes
    these from its own flags."""
    fields: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise AttachError(f"--harness-attach: {pair!r} is not KEY=VALUE")
        if key == "attribution":
            fields["attribution"], fields["served_by_header"] = parse_attribution([value])
        elif key in ("startup_line", "engine_sees_images", "engine_text", "workers_serve_openai", "worker_metrics"):
            fields[key] = _flag(key, value)
        elif key in ("block_size", "workers"):
            try:
                fields[key] = int(value)
            except ValueError:
                raise AttachError(f"--{key.replace('_', '-')}: {value!r} is not an integer") from None
        elif key == "timeout_s":
            try:
                fields[key] = float(value)
            except ValueError:
                raise AttachError(f"--timeout: {value!r} is not a number of seconds") from None
        elif key in ("records", "router_log", "family", "payload", "expect"):
            fields[key] = value or None if key in ("router_log", "family") else value
        else:
            raise AttachError(f"--harness-attach: unknown key {key!r}")
    return AttachSpec(url=url, worker_urls=tuple(worker_urls), model=model or discover_model(url), **fields)  # type: ignore[arg-type]
