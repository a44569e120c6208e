"""Profiles: ModelProfile -> Topology -> Case. Pure data: the pytest plugin turns cases into parameters.

A *model profile* says what is served (model id, short name, family, GPUs, marks). A *topology* says how it is
served (launch script, workers, router and policy, KV cap, VRAM profile, timeout, CI marks) and whether the
stack is a working configuration (``expect="pass"``) or a deliberately degraded control (``expect="fail"``).
A *case* is one model on one topology with one payload, plus per-case overrides.

Ids are ``mm_{topology}_{short}[_{suffix}]``. Marks are applied in this order, so ``-m`` expressions and
reports read the same everywhere: backend (``sim`` | ``vllm``), the topology's marks (``pre_merge``,
``post_merge``, ``nightly``, ...), the model's marks, ``gpu_{n}`` for real backends, the case's own marks, and
last, for a control, ``xfail(strict=True)`` — a control that passes means the gate has no teeth.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

Backend = Literal["sim", "vllm"]
Payload = Literal["image_url", "base64", "multi_image", "multi_turn", "lora"]
Expect = Literal["pass", "fail"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: Routers the built-in launch scripts start; any other name needs declared ``capabilities``.
ROUTERS = ("proxy", "vllm-router", "sglang-router", "none")
PAYLOADS: tuple[str, ...] = get_args(Payload)
#: vLLM's default KV block size (``--block-size``) on CUDA.
DEFAULT_BLOCK_SIZE = 16
CI_MARKS = ("pre_merge", "post_merge", "nightly")

RecordFormat = Literal["harness", "dynamo"]
#: How the gate learns which worker served a request (see ``harness.gate.attribution``).
AttributionSource = Literal["header", "nvext", "metrics", "logs"]


@dataclass(frozen=True)
class RouterCapabilities:
    """What a stack's router (and engine) let the gate observe. Declared, never guessed from the stack's output:
    a check that needs a capability the router declares but does not deliver fails as insufficient evidence,
    and one the router does not declare is not applicable (with that reason)."""

    #: The format of the router's per-decision ``[ROUTING]`` records, None when it keeps none.
    records: RecordFormat | None = None
    #: Whether it logs ``MM-aware KV routing enabled model=... block_size=...`` at start-up.
    startup_line: bool = False
    #: Where worker attribution comes from, in order of preference.
    attribution: tuple[AttributionSource, ...] = ("header", "metrics")
    #: The response header naming the serving worker, for ``header`` attribution.
    served_by_header: str = "X-Served-By"
    #: Whether the engine's ``cached_tokens`` reflect image content (a mocker that ignores pixels does not).
    engine_sees_images: bool = True
    #: Whether replies carry generated text (Dynamo's mocker emits random token ids: ``content`` comes back null).
    engine_text: bool = True
    #: Whether the workers' own URLs serve the OpenAI API, for probes sent straight to a worker (Dynamo's mockers
    #: serve ``/metrics`` on their system port only; requests reach them through the frontend).
    workers_serve_openai: bool = True
    #: Whether the workers' ``/metrics`` export vLLM's prefix-cache counters (``vllm:prefix_cache_*``); Dynamo's
    #: mockers export only ``dynamo_component_*`` series, so the gate cannot compare counters with responses.
    worker_metrics: bool = True
    #: Whether the router's index is fed by the workers' KV-cache events (BlockStored / BlockRemoved /
    #: AllBlocksCleared), so it can see a worker evict. A router that only predicts from its own decisions cannot,
    #: and the eviction check is n/a for it.
    kv_events: bool = False


#: Capabilities of the routers the built-in launch scripts start.
BUILTIN_CAPABILITIES: Mapping[str, RouterCapabilities] = {
    "proxy": RouterCapabilities(records="harness", startup_line=True),
    "vllm-router": RouterCapabilities(),
    "sglang-router": RouterCapabilities(),
    "none": RouterCapabilities(),
}


@dataclass(frozen=True)
class ModelProfile:
    model: str
    short: str
    family: str | None = None
    gpus: int = 1
    marks: tuple[str, ...] = ()
    max_model_len: int = 8192


@dataclass(frozen=True)
class Topology:
    name: str
    script: str
    backend: Backend = "sim"
    marks: tuple[str, ...] = ()
    timeout_s: float = 120.0
    profiled_vram_gib: float | None = None
    requested_kv_cache_bytes: int | None = None
    workers: int = 1
    router: str = "none"
    policy: str | None = None
    #: The KV block size every component of the stack is started with (workers and router alike).
    block_size: int = DEFAULT_BLOCK_SIZE
    env: Mapping[str, str] = field(default_factory=dict)
    #: "pass" for a working stack, "fail" for a degraded control the gate must reject.
    expect: Expect = "pass"
    #: What the router lets the gate observe; None takes the built-in router's (an unknown router must declare).
    capabilities: RouterCapabilities | None = None
    #: Workers publish KV-cache events and the router consumes them (built-in scripts: ``HARNESS_KV_EVENTS=1``).
    #: The built-in proxy's capabilities then say ``kv_events``; a declared router must say so itself.
    kv_events: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"topology {self.name}: backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.router:
            raise ValueError(f"topology {self.name}: router must be a name, got {self.router!r}")
        if self.capabilities is None and self.router not in BUILTIN_CAPABILITIES:
            raise ValueError(
                f"topology {self.name}: router {self.router!r} is not one of the built-in routers {ROUTERS}; "
                "declare what it lets the gate observe with capabilities=RouterCapabilities(...)"
            )
        if self.expect not in ("pass", "fail"):
            raise ValueError(f"topology {self.name}: expect must be 'pass' or 'fail', got {self.expect!r}")
        if self.workers < 1:
            raise ValueError(f"topology {self.name}: workers must be at least 1, got {self.workers}")
        if self.block_size < 1:
            raise ValueError(f"topology {self.name}: block_size must be at least 1, got {self.block_size}")

    @property
    def router_capabilities(self) -> RouterCapabilities:
        if self.capabilities is not None:
            return self.capabilities
        caps = BUILTIN_CAPABILITIES[self.router]
        # Of the built-in routers only the proxy consumes KV events (``--kv-events``).
        return replace(caps, kv_events=True) if self.kv_events and self.router == "proxy" else caps


@dataclass(frozen=True)
class Case:
    model: ModelProfile
    topology: Topology
    payload: Payload = "image_url"
    suffix: str = ""
    extra_script_args: tuple[str, ...] = ()
    marks: tuple[str, ...] = ()
    #: Per-case values that win over the topology's (timeout_s, profiled_vram_gib, requested_kv_cache_bytes,
    #: workers, env, expect, ...).
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.payload not in PAYLOADS:
            raise ValueError(f"case {self.id}: payload must be one of {PAYLOADS}, got {self.payload!r}")
        unknown = set(self.overrides) - set(Topology.__dataclass_fields__)
        if unknown:
            raise ValueError(f"case {self.id}: unknown override(s) {sorted(unknown)}")

    @property
    def id(self) -> str:
        base = f"mm_{self.topology.name}_{self.model.short}"
        return f"{base}_{self.suffix}" if self.suffix else base

    @property
    def effective(self) -> Topology:
        """The topology with this case's overrides applied."""
        return replace(self.topology, **dict(self.overrides)) if self.overrides else self.topology

    @property
    def is_control(self) -> bool:
        return self.effective.expect == "fail"

    @property
    def mark_names(self) -> list[str]:
        t = self.effective
        names = [t.backend, *t.marks, *self.model.marks]
        if t.backend != "sim":
            names.append(f"gpu_{self.model.gpus}")
        names.extend(self.marks)
        return list(dict.fromkeys(names))  # first occurrence wins, order kept


def vram_deselect_reason(case: Case, max_vram_gib: float | None) -> str | None:
    """Why a case does not fit a VRAM budget (None if it does). Unknown VRAM is unsafe, so it is deselected."""
    if max_vram_gib is None:
        return None
    vram = case.effective.profiled_vram_gib
    if vram is None:
        return f"{case.id}: no profiled_vram_gib (unknown VRAM is unsafe under --max-vram-gib)"
    if vram > max_vram_gib:
        return f"{case.id}: profiled {vram} GiB > budget {max_vram_gib} GiB"
    return None


def load_profiles(directory: Path, backend: str | None = None) -> list[Case]:
    """Every ``CASES`` list of ``directory/*.py`` (files starting with ``_`` skipped), optionally by backend."""
    cases: list[Case] = []
    directory = Path(directory).resolve()
    # Siblings (``from _models import ...``) must come from *this* directory, not from a module of the same name
    # cached by an earlier load of another directory, and must not stay cached for the next one.
    siblings = {p.stem for p in directory.glob("*.py")}
    saved = {name: sys.modules.pop(name) for name in siblings if name in sys.modules}
    sys.path.insert(0, str(directory))  # profile files may share definitions (e.g. ``_models.py``)
    try:
        cases = _load_dir(directory)
    finally:
        sys.path.remove(str(directory))
        for name in siblings:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    if backend is not None:
        cases = [c for c in cases if c.effective.backend == backend]
    return cases


def _load_dir(directory: Path) -> list[Case]:
    cases: list[Case] = []
    for path in sorted(directory.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"harness_profiles_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found = getattr(module, "CASES", None)
        if not isinstance(found, Sequence):
            raise ValueError(f"{path}: defines no CASES list")
        cases.extend(found)
    return cases


def find_case(cases: Iterable[Case], case_id: str) -> Case:
    by_id = {c.id: c for c in cases}
    if case_id not in by_id:
        close = sorted(i for i in by_id if case_id.split("_")[-1] in i)[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise KeyError(f"no profile case {case_id!r}{hint} (list them with `harness plan`)")
    return by_id[case_id]


PACKAGE_DIR = Path(__file__).resolve().parent


def default_profile_dir() -> Path:
    """The built-in profiles, shipped as package data (``profiles/`` in a checkout links here)."""
    return PACKAGE_DIR / "gates" / "profiles"


def default_launch_dir() -> Path:
    """The built-in launch scripts (``lib.sh`` and the topologies), shipped as package data."""
    return PACKAGE_DIR / "stack" / "scripts"
