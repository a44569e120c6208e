"""Seeded synthetic multimodal workloads: what a load test sends, decided before the first request goes out.

A workload is a finite list of ``RequestSpec``s. Everything in it (texts, image sizes and contents, which image
is reused where, session structure, LoRA adapters, output lengths) follows from the ``WorkloadConfig`` and its
seed, so two runs of one config send byte-identical requests: that is what makes ``--compare`` fair and a
regression between two reports meaningful.

Why not ``random-mm`` as vLLM's and aiperf's generators do it (fresh pixels per request)? Because then every
request is a guaranteed encoder-cache and prefix-cache miss, and a router's image awareness cannot show. Here an
image *pool* with a reuse ratio decides how often an image comes back, and the workload states its own
**theoretical** hit rate (``harness.load.triad``) so a low achieved hit rate can be blamed on the right party.

Texts are runs of random two-letter words: with the harness tokenizer each word is exactly one token (`` xy`` is
three UTF-8 bytes, one chunk), so prompt lengths are exact on the simulated stack and close on real tokenizers.
"""

from __future__ import annotations

import hashlib
import io
import random
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from harness.mm.families import Family
from harness.mm.geometry import ImageGeometry
from harness.mm.hashing import BlockKeyContext
from harness.mm.prompt import ImagePart, Prompt, Turn, render_chat

CONTENTS = ("solid", "gradient", "noise", "photo")
FORMATS = ("PNG", "JPEG")
PAYLOAD_MODES = ("base64", "url", "asset")
_BIGRAMS = tuple(a + b for a in string.ascii_lowercase for b in string.ascii_lowercase)


class WorkloadError(ValueError):
    """A workload option that cannot be used; ``flag`` names the command-line flag it came from."""

    def __init__(self, message: str, flag: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag


# -- distributions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    """An integer distribution from a short spec: ``N``, ``uniform:A:B``, ``normal:MEAN:STD``, ``choice:A,B,C``.

    Sampling is clipped at ``minimum`` so a normal never yields a negative length.
    """

    kind: str
    params: tuple[float, ...]
    minimum: int = 0

    @classmethod
    def parse(cls, spec: str | int, *, minimum: int = 0, flag: str | None = None) -> Dist:
        if isinstance(spec, int):
            return cls("fixed", (float(spec),), minimum)
        text = str(spec).strip()
        try:
            if ":" not in text:
                return cls("fixed", (float(int(text)),), minimum)
            kind, _, rest = text.partition(":")
            if kind == "choice":
                values = tuple(float(int(v)) for v in rest.split(","))
                if not values:
                    raise ValueError
                return cls("choice", values, minimum)
            params = tuple(float(v) for v in rest.split(":"))
            if kind == "uniform" and len(params) == 2 and params[0] <= params[1]:
                return cls("uniform", params, minimum)
            if kind == "normal" and len(params) == 2 and params[1] >= 0:
                return cls("normal", params, minimum)
        except ValueError:
            pass
        raise WorkloadError(f"bad distribution {spec!r}: use N, uniform:A:B, normal:MEAN:STD or choice:A,B,...", flag)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.params[0]
        elif self.kind == "uniform":
            value = rng.randint(int(self.params[0]), int(self.params[1]))
        elif self.kind == "normal":
            value = round(rng.gauss(self.params[0], self.params[1]))
        else:
            value = rng.choice(self.params)
        return max(int(value), self.minimum)

    @property
    def mean(self) -> float:
        if self.kind == "fixed":
            return self.params[0]
        if self.kind in ("uniform", "normal"):
            return (self.params[0] + self.params[1]) / 2 if self.kind == "uniform" else self.params[0]
        return sum(self.params) / len(self.params)


def parse_weighted(spec: str, *, flag: str | None = None, allowed: Iterable[str] | None = None) -> dict[str, float]:
    """``a:0.7,b:0.3`` (or just ``a``) -> normalised weights; names outside ``allowed`` are an error."""
    out: dict[str, float] = {}
    allowed_set = set(allowed) if allowed is not None else None
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, weight = item.rpartition(":") if ":" in item else (item, "", "1")
        try:
            w = float(weight)
        except ValueError:
            raise WorkloadError(f"bad weight in {item!r} (expected NAME:WEIGHT)", flag) from None
        if w < 0:
            raise WorkloadError(f"negative weight in {item!r}", flag)
        if allowed_set is not None and name not in allowed_set:
            raise WorkloadError(f"unknown value {name!r}; choose from {', '.join(sorted(allowed_set))}", flag)
        out[name] = out.get(name, 0.0) + w
    total = sum(out.values())
    if not out or total <= 0:
        raise WorkloadError(f"empty weighted list {spec!r}", flag)
    return {k: v / total for k, v in out.items()}


def parse_resolutions(spec: str, *, flag: str | None = "--resolutions") -> dict[tuple[int, int], float]:
    """``512x512:0.5,1024x768:0.5`` -> {(w, h): weight}."""
    out: dict[tuple[int, int], float] = {}
    for name, weight in parse_weighted(spec, flag=flag).items():
        w, sep, h = name.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
            raise WorkloadError(f"bad resolution {name!r} (expected WIDTHxHEIGHT)", flag)
        out[(int(w), int(h))] = weight
    return out


def _pick(rng: random.Random, weights: dict[Any, float]) -> Any:
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


# -- the workload -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSpec:
    """One image of the workload. Equal ids mean equal bytes (reuse); different ids never share bytes."""

    id: str
    width: int = 512
    height: int = 512
    format: str = "PNG"
    content: str = "photo"
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "content": self.content,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, obj: Any) -> ImageSpec:
        if isinstance(obj, (str, int)):
            ident = str(obj)
            return cls(id=ident, seed=_stable_seed(ident))
        ident = str(obj["id"])
        fmt = str(obj.get("format", "PNG")).upper()
        content = str(obj.get("content", "photo"))
        if fmt not in FORMATS:
            raise WorkloadError(f"image {ident}: format must be one of {FORMATS}, got {fmt!r}")
        if content not in CONTENTS:
            raise WorkloadError(f"image {ident}: content must be one of {CONTENTS}, got {content!r}")
        return cls(
            id=ident,
            width=int(obj.get("width", 512)),
            height=int(obj.get("height", 512)),
            format=fmt,
            content=content,
            seed=int(obj.get("seed", _stable_seed(ident))),
        )


@dataclass(frozen=True)
class TurnSpec:
    """One user turn: its images (first, as in a typical VLM prompt), its text, and the assistant reply that a
    later turn of the session carries forward (synthetic and fixed, so the history is deterministic)."""

    text: str
    images: tuple[ImageSpec, ...] = ()
    answer: str = ""


@dataclass(frozen=True)
class RequestSpec:
    index: int
    turns: tuple[TurnSpec, ...]
    max_tokens: int
    system: str | None = None
    #: A LoRA adapter name sent as ``model``; None = the base model.
    model: str | None = None
    session: int | None = None
    #: The index of the request that must finish before this one is sent (the previous turn of the session).
    after: int | None = None
    #: Trace replay: when to send, in seconds from the start.
    timestamp_s: float | None = None

    @property
    def images(self) -> list[ImageSpec]:
        return [img for t in self.turns for img in t.images]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "timestamp_s": self.timestamp_s,
            "session": self.session,
            "after": self.after,
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system,
            "turns": [
                {"text": t.text, "answer": t.answer, "images": [i.to_json() for i in t.images]} for t in self.turns
            ],
        }


@dataclass(frozen=True)
class WorkloadConfig:
    """Every knob of a synthetic workload. Defaults: single-turn, one 512x512 photo-like PNG per request drawn
    from a pool that is reused half the time, one shared system prompt."""

    requests: int = 200
    seed: int = 0
    input_len: str = "64"
    output_len: str = "32"
    images_per_request: str = "1"
    resolutions: str = "512x512"
    formats: str = "PNG"
    contents: str = "photo"
    #: Probability that an image slot reuses an image already sent (0 = every image new).
    image_reuse: float = 0.5
    #: At most this many distinct images; once reached every slot reuses one (None = no cap).
    image_pool: int | None = None
    turns: str = "1"
    #: Sessions interleaved in request order; the next turn of a session comes about this many requests later.
    session_interleave: int = 16
    system_prompts: int = 1
    system_len: int = 32
    #: ``adapter:weight,...``; the remaining weight (if the weights sum below 1) goes to the base model.
    lora_mix: str | None = None
    payload: str = "base64"

    def validate(self) -> None:
        if self.requests < 1:
            raise WorkloadError("must be at least 1", "--requests")
        if not 0.0 <= self.image_reuse <= 1.0:
            raise WorkloadError(f"must be between 0 and 1, got {self.image_reuse}", "--image-reuse")
        if self.image_pool is not None and self.image_pool < 1:
            raise WorkloadError("must be at least 1", "--image-pool")
        if self.payload not in PAYLOAD_MODES:
            raise WorkloadError(f"must be one of {', '.join(PAYLOAD_MODES)}", "--payload")
        if self.system_prompts < 0 or self.system_len < 0:
            raise WorkloadError("must not be negative", "--system-prompts/--system-len")
        if self.session_interleave < 1:
            raise WorkloadError("must be at least 1", "--session-interleave")
        Dist.parse(self.input_len, minimum=1, flag="--input-len")
        Dist.parse(self.output_len, minimum=1, flag="--output-len")
        Dist.parse(self.images_per_request, flag="--images-per-request")
        Dist.parse(self.turns, minimum=1, flag="--turns")
        parse_resolutions(self.resolutions)
        parse_weighted(self.formats, flag="--formats", allowed=FORMATS)
        parse_weighted(self.contents, flag="--contents", allowed=CONTENTS)
        if self.lora_mix:
            _lora_weights(self.lora_mix)


def _lora_weights(spec: str) -> dict[str | None, float]:
    raw: dict[str, float] = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, sep, weight = item.rpartition(":")
        if not sep:
            name, weight = item, "1"
        try:
            raw[name] = float(weight)
        except ValueError:
            raise WorkloadError(f"bad weight in {item!r} (expected ADAPTER:WEIGHT)", "--lora-mix") from None
    total = sum(raw.values())
    if total <= 0 or any(w < 0 for w in raw.values()):
        raise WorkloadError(f"weights must be positive: {spec!r}", "--lora-mix")
    out: dict[str | None, float] = {k: v for k, v in raw.items()}
    if total < 1.0:
        out[None] = 1.0 - total
    return out


def _stable_seed(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def words(rng: random.Random, n: int) -> str:
    """``n`` random two-letter words: exactly ``n`` tokens for the harness tokenizer."""
    if n <= 0:
        return ""
    picked = rng.choices(_BIGRAMS, k=n)
    return " ".join(picked)


@dataclass
class _ImagePool:
    rng: random.Random
    cfg: WorkloadConfig
    resolutions: dict[tuple[int, int], float]
    formats: dict[str, float]
    contents: dict[str, float]
    seen: list[ImageSpec] = field(default_factory=list)

    def draw(self) -> ImageSpec:
        full = self.cfg.image_pool is not None and len(self.seen) >= self.cfg.image_pool
        if self.seen and (full or self.rng.random() < self.cfg.image_reuse):
            return self.rng.choice(self.seen)
        w, h = _pick(self.rng, self.resolutions)
        spec = ImageSpec(
            id=f"img-{len(self.seen):06d}",
            width=w,
            height=h,
            format=_pick(self.rng, self.formats),
            content=_pick(self.rng, self.contents),
            seed=self.rng.getrandbits(63),
        )
        self.seen.append(spec)
        return spec


def generate(cfg: WorkloadConfig) -> list[RequestSpec]:
    """The workload's requests, in send order. Pure: the same config yields the same list."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    input_len = Dist.parse(cfg.input_len, minimum=1)
    output_len = Dist.parse(cfg.output_len, minimum=1)
    per_request = Dist.parse(cfg.images_per_request)
    turns_dist = Dist.parse(cfg.turns, minimum=1)
    pool = _ImagePool(
        random.Random(rng.getrandbits(64)),
        cfg,
        parse_resolutions(cfg.resolutions),
        parse_weighted(cfg.formats, allowed=FORMATS),
        parse_weighted(cfg.contents, allowed=CONTENTS),
    )
    sys_rng = random.Random(rng.getrandbits(64))
    systems = [words(sys_rng, cfg.system_len) for _ in range(cfg.system_prompts)] if cfg.system_len else []
    loras = _lora_weights(cfg.lora_mix) if cfg.lora_mix else {None: 1.0}

    # Sessions are laid out in waves of `session_interleave`: turn k of every session in a wave, then turn k+1.
    # The next turn of a session thus comes ~interleave requests later, not right behind its predecessor.
    out: list[RequestSpec] = []
    session = 0
    while len(out) < cfg.requests:
        wave: list[dict[str, Any]] = []
        for _ in range(cfg.session_interleave):
            n_turns = turns_dist.sample(rng)
            wave.append(
                {
                    "id": session,
                    "turns": n_turns,
                    "system": rng.choice(systems) if systems else None,
                    "model": _pick(rng, loras),
                    "history": (),
                    "last": None,
                }
            )
            session += 1
        max_turns = max(s["turns"] for s in wave)
        for k in range(max_turns):
            for s in wave:
                if k >= s["turns"] or len(out) >= cfg.requests:
                    continue
                images = tuple(pool.draw() for _ in range(per_request.sample(rng)))
                turn = TurnSpec(text=words(rng, input_len.sample(rng)), images=images, answer=words(rng, 8))
                history = (*s["history"], turn)
                out.append(
                    RequestSpec(
                        index=len(out),
                        turns=history,
                        max_tokens=output_len.sample(rng),
                        system=s["system"],
                        model=s["model"],
                        session=s["id"] if s["turns"] > 1 else None,
                        after=s["last"],
                    )
                )
                s["history"], s["last"] = history, len(out) - 1
    return out


def distinct_images(requests: Iterable[RequestSpec]) -> dict[str, ImageSpec]:
    seen: dict[str, ImageSpec] = {}
    for req in requests:
        for img in req.images:
            seen.setdefault(img.id, img)
    return seen


# -- rendering ----------------------------------------------------------------------------------------------
def render_image(spec: ImageSpec) -> bytes:
    """The image's encoded bytes. Deterministic in the spec; the id's digest is stamped into the first pixels
    so two specs never share bytes (the content hash is over bytes)."""
    rng = np.random.default_rng(spec.seed)
    w, h = spec.width, spec.height
    if spec.content == "solid":
        arr = np.empty((h, w, 3), dtype=np.uint8)
        arr[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    elif spec.content == "gradient":
        a, b = rng.integers(0, 256, 3).astype(np.float32), rng.integers(0, 256, 3).astype(np.float32)
        t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]
        arr = np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.uint8)
    elif spec.content == "noise":
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    else:  # photo-like: smooth low-frequency structure plus fine grain, so it compresses like a photograph
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        base = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        arr = np.clip(base + grain, 0, 255).astype(np.uint8)
    arr = np.array(arr, copy=True)
    stamp = np.frombuffer(hashlib.blake2b(spec.id.encode(), digest_size=6).digest(), dtype=np.uint8)
    flat = arr.reshape(-1)
    flat[: stamp.size] = stamp[: flat.size]
    buf = io.BytesIO()
    img = Image.fromarray(arr, "RGB")
    if spec.format == "JPEG":
        img.save(buf, "JPEG", quality=90)
    else:
        img.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def mime_of(spec: ImageSpec) -> str:
    return "image/jpeg" if spec.format == "JPEG" else "image/png"


def messages(req: RequestSpec, image_ref: Callable[[ImageSpec], str]) -> list[dict[str, Any]]:
    """OpenAI chat messages for ``req``; ``image_ref`` gives each image's URL (data URL, http URL, mmfile://)."""
    out: list[dict[str, Any]] = []
    if req.system is not None:
        out.append({"role": "system", "content": req.system})
    for i, turn in enumerate(req.turns):
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_ref(img)}} for img in turn.images
        ]
        content.append({"type": "text", "text": turn.text})
        out.append({"role": "user", "content": content})
        if i < len(req.turns) - 1:
            out.append({"role": "assistant", "content": turn.answer})
    return out


def chat_body(
    req: RequestSpec, model: str, image_ref: Callable[[ImageSpec], str], *, ignore_eos: bool = True
) -> dict[str, Any]:
    """A streaming chat request with usage in the last chunk. ``ignore_eos`` makes the output length the one the
    workload asked for (vllm bench serve sends it too), so decode time is the workload's, not the model's."""
    body: dict[str, Any] = {
        "model": req.model or model,
        "messages": messages(req, image_ref),
        "max_tokens": req.max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def prompt_of(req: RequestSpec, family: Family, geometry: ImageGeometry) -> Prompt:
    """The prompt the server will see, rendered locally with the harness template: images keyed by workload id
    (ids are equal exactly when bytes are), placeholder counts from the model's geometry."""
    turns: list[Turn] = []
    if req.system is not None:
        turns.append(Turn("system", [req.system]))
    images: list[tuple[str, int]] = []
    for i, t in enumerate(req.turns):
        parts: list[str | ImagePart] = [ImagePart(url=img.id) for img in t.images]
        parts.append(t.text)
        turns.append(Turn("user", parts))
        images.extend((img.id, geometry.num_tokens(img.width, img.height)) for img in t.images)
        if i < len(req.turns) - 1:
            turns.append(Turn("assistant", [t.answer]))
    return render_chat(turns, family, images)


def key_context(req: RequestSpec) -> BlockKeyContext:
    return BlockKeyContext(lora_name=req.model) if req.model else BlockKeyContext()


def summarize(requests: Sequence[RequestSpec]) -> dict[str, Any]:
    """Facts about a workload for the report (counts, not the texts)."""
    imgs = [img for r in requests for img in r.images]
    return {
        "requests": len(requests),
        "images": len(imgs),
        "distinct_images": len({i.id for i in imgs}),
        "sessions": len({r.session for r in requests if r.session is not None}),
        "multi_turn_requests": sum(1 for r in requests if len(r.turns) > 1),
        "lora_requests": sum(1 for r in requests if r.model),
    }
