"""A case resolved into the facts of the stack it boots: computed once, read by the launcher and the gate.

Before this object each reader re-derived what it needed (``case.payload``, ``case.effective.router``, a block
size of 16 written into the gate); now the launch environment and every gate threshold come from the same
values, so what the gate expects is what the stack was told to be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from harness.profiles import Backend, Case, Payload, RouterCapabilities

GIB = 1024**3
#: Per-worker KV cache when a topology names none (the simulated engine's memory only).
DEFAULT_KV_CACHE_BYTES = 4 * GIB
#: The adapter the LoRA payload asks for when ``HARNESS_LORA_NAME`` does not name one.
DEFAULT_ADAPTER = "harness-lora"


@dataclass(frozen=True)
class StackSpec:
    case_id: str
    model: str
    family: str | None
    backend: Backend
    script: str
    workers: int
    router: str
    policy: str | None
    block_size: int
    payload: Payload
    #: The LoRA adapter the gate's requests name (the LoRA payload only).
    adapter: str | None
    kv_cache_bytes: int
    max_model_len: int
    timeout_s: float
    is_control: bool
    capabilities: RouterCapabilities
    extra_worker_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: The workers publish KV-cache events and the router consumes them (``Topology.kv_events``).
    kv_events: bool = False

    @property
    def has_router(self) -> bool:
        return self.router != "none"

    @property
    def request_model(self) -> str:
        """What the gate's requests put in ``model``: the adapter for LoRA cases, else the base model."""
        return self.adapter or self.model


def resolve_spec(case: Case, environ: Mapping[str, str] | None = None) -> StackSpec:
    """The stack ``case`` describes. ``environ`` supplies ``HARNESS_LORA_NAME`` (real adapters on real GPUs)."""
    t = case.effective
    environ = environ or {}
    adapter = environ.get("HARNESS_LORA_NAME") or DEFAULT_ADAPTER if case.payload == "lora" else None
    return StackSpec(
        case_id=case.id,
        model=case.model.model,
        family=case.model.family,
        backend=t.backend,
        script=t.script,
        workers=t.workers,
        router=t.router,
        policy=t.policy,
        block_size=t.block_size,
        payload=case.payload,
        adapter=adapter,
        kv_cache_bytes=t.requested_kv_cache_bytes or DEFAULT_KV_CACHE_BYTES,
        max_model_len=case.model.max_model_len,
        timeout_s=t.timeout_s,
        is_control=case.is_control,
        capabilities=t.router_capabilities,
        extra_worker_args=case.extra_script_args,
        env=dict(t.env),
        kv_events=t.kv_events,
    )
