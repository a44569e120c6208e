"""Trace replay: JSONL files with timestamps -> ``RequestSpec``s sent at those times.

Two formats, told apart per line:

* the harness's own: one ``RequestSpec.to_json()`` object per line (``turns`` with texts and image specs,
  ``timestamp_s``, ``session``/``after``, ``model``, ``max_tokens``). ``save`` writes it, so any synthetic
  workload can be frozen and replayed later, or edited by hand.
* Mooncake-style (the FAST'25 Mooncake traces, github.com/kvcache-ai/Mooncake ``mooncake_trace.jsonl``):
  ``{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}``, where each hash id names one
  block of ``block_tokens`` (512 in the published traces) prompt tokens, equal ids meaning equal content. The
  harness extends it with images: ``"image_ids": [...]`` (or ``"images": [{"id", "width", "height", ...}]``),
  placed before the text as a VLM prompt puts them. Text for a hash id is generated from the id, so two lines
  sharing a hash-id prefix share a token prefix; ``input_length`` counts text tokens (image tokens come from the
  model's geometry).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from harness.load.workloads import ImageSpec, RequestSpec, TurnSpec, WorkloadError, words

MOONCAKE_BLOCK_TOKENS = 512


def _block_text(hash_id: Any, block_tokens: int) -> list[str]:
    rng = random.Random(f"mooncake-block-{hash_id}")
    return words(rng, block_tokens).split(" ")


def from_mooncake(
    obj: dict[str, Any],
    index: int,
    *,
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
    image_size: tuple[int, int] = (512, 512),
) -> RequestSpec:
    hash_ids = obj.get("hash_ids") or []
    input_length = int(obj.get("input_length", len(hash_ids) * block_tokens))
    pieces: list[str] = []
    for hid in hash_ids:
        pieces.extend(_block_text(hid, block_tokens))
    if len(pieces) < input_length:  # more tokens than blocks named: the tail is unique to this line
        pieces.extend(words(random.Random(f"mooncake-tail-{index}"), input_length - len(pieces)).split(" "))
    text = " ".join(pieces[: max(input_length, 1)])
    images: list[ImageSpec] = []
    for item in obj.get("images") or []:
        images.append(ImageSpec.from_json(item))
    for ident in obj.get("image_ids") or []:
        spec = ImageSpec.from_json(ident)
        images.append(ImageSpec(spec.id, image_size[0], image_size[1], spec.format, spec.content, spec.seed))
    return RequestSpec(
        index=index,
        turns=(TurnSpec(text=text, images=tuple(images)),),
        max_tokens=max(int(obj.get("output_length", 16)), 1),
        timestamp_s=float(obj["timestamp"]) / 1000.0,
    )


def from_own(obj: dict[str, Any], index: int) -> RequestSpec:
    turns = tuple(
        TurnSpec(
            text=str(t.get("text", "")),
            images=tuple(ImageSpec.from_json(i) for i in t.get("images") or []),
            answer=str(t.get("answer", "")),
        )
        for t in obj["turns"]
    )
    if not turns:
        raise WorkloadError("a request needs at least one turn")
    ts = obj.get("timestamp_s")
    after = obj.get("after")
    return RequestSpec(
        index=index,
        turns=turns,
        max_tokens=max(int(obj.get("max_tokens", 16)), 1),
        system=obj.get("system"),
        model=obj.get("model"),
        session=obj.get("session"),
        after=int(after) if after is not None else None,
        timestamp_s=float(ts) if ts is not None else None,
    )


def parse_lines(
    lines: Iterable[str | bytes],
    *,
    block_tokens: int = MOONCAKE_BLOCK_TOKENS,
    image_size: tuple[int, int] = (512, 512),
    source: str = "trace",
) -> list[RequestSpec]:
    """Requests from JSONL lines, ordered by timestamp (stable). ``after`` indices refer to line order in the
    file and are remapped to the sorted order."""
    parsed: list[RequestSpec] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict):
                raise WorkloadError("expected a JSON object")
            idx = len(parsed)
            if "turns" in obj:
                parsed.append(from_own(obj, idx))
            elif "timestamp" in obj and ("hash_ids" in obj or "input_length" in obj):
                parsed.append(from_mooncake(obj, idx, block_tokens=block_tokens, image_size=image_size))
            else:
                raise WorkloadError("neither the harness format (turns) nor Mooncake's (timestamp, hash_ids)")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise WorkloadError(f"{source}:{lineno}: {exc}", "--trace") from None
    order = sorted(range(len(parsed)), key=lambda i: (parsed[i].timestamp_s or 0.0, i))
    new_index = {old: new for new, old in enumerate(order)}
    out = []
    for new, old in enumerate(order):
        r = parsed[old]
        after = new_index.get(r.after) if r.after is not None else None
        out.append(RequestSpec(new, r.turns, r.max_tokens, r.system, r.model, r.session, after, r.timestamp_s))
    if out and out[0].timestamp_s is not None:  # replay from the first request, not from the trace's epoch
        t0 = out[0].timestamp_s
        out = [
            RequestSpec(
                r.index,
                r.turns,
                r.max_tokens,
                r.system,
                r.model,
                r.session,
                r.after,
                (r.timestamp_s - t0) if r.timestamp_s is not None else None,
            )
            for r in out
        ]
    return out


def load(path: Path, **kw: Any) -> list[RequestSpec]:
    try:
        with open(path, "rb") as fh:
            return parse_lines(fh, source=str(path), **kw)
    except OSError as exc:
        raise WorkloadError(f"cannot read {path}: {exc.strerror}", "--trace") from None


def save(path: Path, requests: Iterable[RequestSpec]) -> None:
    with open(path, "wb") as fh:
        for r in requests:
            fh.write(orjson.dumps(r.to_json()) + b"\n")
