"""Request fields read the way vLLM's pydantic request models read them.

vLLM validates bodies with pydantic v2 models in lax mode (``ChatCompletionRequest``, ``CompletionRequest`` in
``vllm/entrypoints/openai/*/protocol.py``; ``LoadLoRAAdapterRequest`` in ``vllm/entrypoints/serve/lora/
protocol.py``): a number written as a string (``"0.5"``), an integral float for an int (``3.0``), ``"true"`` for a
bool are accepted; ``"hot"`` for a float or ``"many"`` for an int are a 400. Then ``SamplingParams._verify_args``
(``vllm/sampling_params.py``) rejects values out of range. A simulated engine that answered 200 where vLLM
answers 400 would let a router's bad forwarding pass a gate.

Errors name the field and show the input as JSON, never a Python repr.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from harness.errors import ApiError

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _invalid(field: str, expected: str, value: Any) -> ApiError:
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError):
        shown = type(value).__name__
    return ApiError(400, f"1 validation error: {field}: Input should be {expected} (input: {shown})", field)


def lax_int(body: Mapping[str, Any], field: str) -> int | None:
    """pydantic v2 lax ``int``: ints, bools, integral floats, and strings that parse as an int."""
    value = body.get(field)
    if value is None or isinstance(value, int):
        return None if value is None else int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _invalid(field, "a valid integer", value)


def lax_float(body: Mapping[str, Any], field: str) -> float | None:
    """pydantic v2 lax ``float``: numbers, bools, and strings that parse as a finite-or-not float."""
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _invalid(field, "a valid number", value)


def lax_bool(body: Mapping[str, Any], field: str, default: bool = False) -> bool:
    """pydantic v2 lax ``bool``: bools, 0/1, and the strings true/false, yes/no, on/off, t/f, y/n, 1/0."""
    value = body.get(field)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _invalid(field, "a valid boolean", value)


@dataclass(frozen=True)
class SamplingFields:
    """The sampling fields of a body, typed and range-checked as vLLM does before the request reaches the engine."""

    max_tokens: int | None
    n: int
    stop: tuple[str, ...]
    ignore_eos: bool
    temperature: float | None
    top_p: float | None
    seed: int | None


def sampling_fields(body: Mapping[str, Any]) -> SamplingFields:
    """Validate the sampling part of a chat or completion body (``SamplingParams._verify_args``)."""
    field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = lax_int(body, field)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    n = lax_int(body, "n")
    n = 1 if n is None else n
    if n < 1:
        raise ApiError(400, f"n must be at least 1, got {n}.", "n")
    temperature = lax_float(body, "temperature")
    if temperature is not None and (temperature < 0 or math.isnan(temperature)):
        raise ApiError(400, f"temperature must be non-negative, got {temperature}.", "temperature")
    top_p = lax_float(body, "top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}.", "top_p")
    for name in ("presence_penalty", "frequency_penalty"):
        penalty = lax_float(body, name)
        if penalty is not None and not -2 <= penalty <= 2:
            raise ApiError(400, f"{name} must be in [-2, 2], got {penalty}.", name)
    seed = lax_int(body, "seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    else:
        raise _invalid("stop", "a valid string or a list of strings", stop)
    return SamplingFields(
        max_tokens=max_tokens,
        n=n,
        stop=stops,
        ignore_eos=lax_bool(body, "ignore_eos"),
        temperature=temperature,
        top_p=top_p,
        seed=seed,
    )
