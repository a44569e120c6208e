"""Command line of the simulated worker. Flag names follow ``vllm serve`` where vLLM has the concept."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.mm.hashing import DEFAULT_BLOCK_SIZE
from harness.mm.options import MMOptions, add_mm_arguments, json_object, pop_mm_options
from harness.sim.degrade import parse_modes


@dataclass
class WorkerConfig:
    model: str
    port: int
    host: str = "127.0.0.1"
    served_model_name: str | None = None
    worker_name: str | None = None
    # Cache and batching
    block_size: int = DEFAULT_BLOCK_SIZE
    kv_cache_memory_bytes: int | None = None
    num_gpu_blocks_override: int | None = None
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prompt_tokens_details: bool = False
    # Timing
    speedup: float = 1.0
    #: None: the model's own default (``harness.sim.timing.model_costs``).
    step_overhead_ms: float | None = None
    prefill_token_us: float | None = None
    image_token_us: float | None = None
    decode_seq_us: float | None = None
    startup_delay: float = 0.0
    mm: MMOptions = field(default_factory=MMOptions)
    kv_events_config: dict[str, Any] = field(default_factory=dict)
    # LoRA
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 64
    lora_modules: list[tuple[str, str]] = field(default_factory=list)
    # Simulated GPU
    sim_gpu_index: int = 0
    sim_gpu_memory_gib: float = 80.0
    # Faults
    fail_startup: bool = False
    crash_after: int | None = None
    error_rate: float = 0.0
    seed: int = 0
    #: TEST-ONLY engine degradations (``harness.sim.degrade``); empty in any real use.
    degrade: frozenset[str] = frozenset()
    # Logging
    disable_log_requests: bool = False
    log_level: str = "info"

    @property
    def name(self) -> str:
        return self.worker_name or f"sim-{self.port}"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model


def _lora_module(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--lora-modules expects name=path, got {text!r}")
    return name, path


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = WorkerConfig(model="", port=0)
    p = argparse.ArgumentParser(
        prog="python -m harness.sim.worker",
        description="Simulated vLLM worker with a multimodal-aware prefix cache.",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default=d.host)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--worker-name", default=None, help="name in X-Served-By and logs (default sim-PORT)")
    g = p.add_argument_group("cache and batching")
    g.add_argument("--block-size", type=int, default=d.block_size)
    g.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    g.add_argument("--num-gpu-blocks-override", type=int, default=None)
    g.add_argument("--gpu-memory-utilization", type=float, default=d.gpu_memory_utilization)
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    g.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    g.add_argument("--enable-prefix-caching", action="store_true", help="accepted for vLLM parity (always on)")
    g.add_argument(
        "--enable-prompt-tokens-details",
        action="store_true",
        help="report usage.prompt_tokens_details.cached_tokens (vLLM omits it without this flag)",
    )
    g.add_argument(
        "--kv-events-config",
        type=json_object("--kv-events-config"),
        default={},
        help='vLLM\'s format: {"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://..."}',
    )
    g.add_argument("--enforce-eager", action="store_true", help="accepted for vLLM parity")
    t = p.add_argument_group("timing model")
    t.add_argument("--speedup", type=float, default=d.speedup, help="divide every delay; 0 disables delays")
    per_model = "default: the model's own, from its size (harness.sim.timing)"
    t.add_argument("--step-overhead-ms", type=float, default=None, help=per_model)
    t.add_argument("--prefill-token-us", type=float, default=None, help=per_model)
    t.add_argument("--image-token-us", type=float, default=None, help=per_model)
    t.add_argument("--decode-seq-us", type=float, default=None, help=per_model)
    t.add_argument("--startup-delay", type=float, default=d.startup_delay, help="seconds of simulated start-up")
    add_mm_arguments(p)
    lo = p.add_argument_group("LoRA")
    lo.add_argument("--enable-lora", action="store_true")
    lo.add_argument("--max-loras", type=int, default=d.max_loras, help="the max_lora label of vllm:lora_requests_info")
    lo.add_argument("--max-lora-rank", type=int, default=d.max_lora_rank)
    lo.add_argument("--max-cpu-loras", type=int, default=None, help="accepted for vLLM parity")
    lo.add_argument("--lora-modules", type=_lora_module, nargs="+", default=[])
    gp = p.add_argument_group("simulated GPU")
    gp.add_argument(
        "--sim-gpu-index",
        type=int,
        default=None,
        help="simulated GPU to account memory on (default: first of CUDA_VISIBLE_DEVICES, else 0)",
    )
    gp.add_argument("--sim-gpu-memory-gib", type=float, default=d.sim_gpu_memory_gib)
    f = p.add_argument_group("fault injection")
    f.add_argument("--fail-startup", action="store_true", help="exit with status 1 at the end of start-up")
    f.add_argument("--crash-after", type=int, default=None, help="exit abruptly on request N+1")
    f.add_argument("--error-rate", type=_fraction, default=0.0, help="fraction of requests answered 500")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--degrade", action="append", default=[], help=argparse.SUPPRESS)  # test-only: sim/degrade.py
    p.add_argument("--disable-log-requests", action="store_true")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def parse_args(argv: Sequence[str] | None = None) -> WorkerConfig:
    ns = build_parser().parse_args(argv)
    values = vars(ns)
    for ignored in ("enable_prefix_caching", "enforce_eager", "max_cpu_loras"):  # parity only
        values.pop(ignored)
    if values["sim_gpu_index"] is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        values["sim_gpu_index"] = int(visible) if visible.isdigit() else 0
    mm = pop_mm_options(values)
    try:
        values["degrade"] = parse_modes(values["degrade"])
    except ValueError as exc:
        raise SystemExit(f"--degrade: {exc}") from None
    return WorkerConfig(**values, mm=mm)
