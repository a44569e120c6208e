"""``harness bench``: prepare a workload once, run it against one target, a sweep, or several routers, and report.

The thin I/O shell around the pure parts (workloads, generator, stats, triad): it renders and publishes the
images (data URLs, the loopback image server, or an asset directory), scrapes the workers' ``/metrics`` before
and after each run, boots a case's stack per policy for ``--compare`` (``harness.stack.launch``), and hands
everything to ``harness.report.bench``, which writes after every run and again in ``finally`` — an interrupted
or failed benchmark still leaves its report.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.gate.attribution import (
    AttributionSource,
    HeaderAttribution,
    MetricsAttribution,
    metrics_deltas,
)
from harness.gate.checks.prom import parse_metrics
from harness.load import triad as triad_mod
from harness.load.generator import BodyMaker, LoadResult, LoadShape, Target, run_load, run_load_procs
from harness.load.stats import RequestRecord, hotspot_factor, per_worker, run_stats
from harness.load.workloads import (
    ImageSpec,
    RequestSpec,
    WorkloadConfig,
    distinct_images,
    key_context,
    mime_of,
    prompt_of,
    render_image,
)
from harness.mm.geometry import ImageGeometry, resolve_geometry
from harness.mm.hashing import DEFAULT_BLOCK_SIZE, block_hashes

COMPARE_ROUTERS = ("vllm-router", "sglang-router")


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked; the message says what to change."""


# -- the prepared workload ----------------------------------------------------------------------------------
@dataclass
class PreparedWorkload:
    requests: list[RequestSpec]
    keys: list[triad_mod.PromptKey]
    image_tokens: list[int]
    model: str
    block_size: int
    theoretical: float
    config: dict[str, Any]
    facts: dict[str, Any]


def prepare(
    requests: Sequence[RequestSpec],
    model: str,
    *,
    geometry: ImageGeometry,
    block_size: int = DEFAULT_BLOCK_SIZE,
    warmup: int = 0,
    config: dict[str, Any] | None = None,
    facts: dict[str, Any] | None = None,
) -> PreparedWorkload:
    """Local prompt rendering: block keys (for the theoretical and oracle hit rates) and image-token counts."""
    keys, image_tokens = [], []
    for k, req in enumerate(requests):
        prompt = prompt_of(req, geometry.family, geometry)
        hashes = block_hashes(prompt.token_ids, block_size, prompt.mm_items, key_context(req))
        keys.append(triad_mod.PromptKey(tuple(hashes), prompt.num_tokens, counted=k >= warmup))
        image_tokens.append(prompt.num_image_tokens)
    theo = triad_mod.theoretical(keys, block_size).rate
    return PreparedWorkload(
        list(requests), keys, image_tokens, model, block_size, theo, dict(config or {}), dict(facts or {})
    )


@contextlib.contextmanager
def published_images(
    requests: Sequence[RequestSpec], payload: str, asset_dir: Path | None = None, log: Callable[[str], None] = print
) -> Iterator[dict[str, str]]:
    """Each distinct image rendered once and made reachable the way ``payload`` says; yields id -> reference."""
    images = distinct_images(requests)
    t0 = time.perf_counter()
    refs: dict[str, str] = {}
    server = None
    store = None
    if payload == "url":
        from harness.gate.image_server import ImageServer

        server = ImageServer().start()
    elif payload == "asset":
        from harness.mm.assets import AssetStore

        if asset_dir is None:
            raise BenchError("--payload asset needs --asset-dir (the directory the proxy/workers read mmfile:// from)")
        store = AssetStore(asset_dir).ensure()
    try:
        for ident, spec in images.items():
            data = render_image(spec)
            refs[ident] = _publish(spec, data, payload, server, store)
        if images:
            log(f"rendered {len(images)} distinct image(s) as {payload} in {time.perf_counter() - t0:.1f}s")
        yield refs
    finally:
        if server is not None:
            server.stop()


def _publish(spec: ImageSpec, data: bytes, payload: str, server: Any, store: Any) -> str:
    if payload == "base64":
        return f"data:{mime_of(spec)};base64," + base64.b64encode(data).decode()
    if payload == "url":
        ext = "jpg" if spec.format == "JPEG" else "png"
        return str(server.add(f"{spec.id}.{ext}", data))
    return str(store.put(data))


# -- workers' /metrics ------------------------------------------------------------------------------------------
@dataclass
class WorkerInfo:
    url: str
    name: str


def discover_workers(urls: Sequence[str], header: str = "X-Served-By") -> list[WorkerInfo]:
    """Each worker's name as it reports itself (``X-Served-By`` on /health), else its host:port."""
    out = []
    with httpx.Client(timeout=5.0) as client:
        for url in urls:
            name = url.split("//", 1)[-1].rstrip("/")
            with contextlib.suppress(httpx.HTTPError):
                name = client.get(f"{url}/health").headers.get(header) or name
            out.append(WorkerInfo(url.rstrip("/"), name))
    return out


def scrape(workers: Sequence[WorkerInfo]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with httpx.Client(timeout=5.0) as client:
        for w in workers:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                resp = client.get(f"{w.url}/metrics")
                if resp.status_code == 200:
                    out[w.name] = parse_metrics(resp.text)
    return out


def cache_blocks_from_metrics(workers: Sequence[WorkerInfo]) -> int | None:
    """vLLM's ``vllm:cache_config_info{num_gpu_blocks=...}`` gauge, when the workers export it."""
    with httpx.Client(timeout=5.0) as client:
        for w in workers:
            try:
                text = client.get(f"{w.url}/metrics").text
                for fam in text_string_to_metric_families(text):
                    for s in fam.samples:
                        if s.name.startswith("vllm:cache_config_info") and s.labels.get("num_gpu_blocks"):
                            return int(s.labels["num_gpu_blocks"])
            except (httpx.HTTPError, ValueError):
                continue
    return None


def reset_caches(workers: Sequence[WorkerInfo]) -> bool:
    ok = True
    with httpx.Client(timeout=10.0) as client:
        for w in workers:
            try:
                ok = client.post(f"{w.url}/reset_prefix_cache").status_code == 200 and ok
            except httpx.HTTPError:
                ok = False
    return ok


# -- one run -------------------------------------------------------------------------------------------------------
@dataclass
class RunSpec:
    label: str
    urls: tuple[str, ...]
    workers: list[WorkerInfo]
    shape: LoadShape
    description: str = ""
    cache_blocks: int | None = None
    #: Workers the oracle distributes over when none are known by URL.
    oracle_workers: int = 1


@dataclass
class RunOutcome:
    label: str
    description: str
    records: list[RequestRecord]
    summary: dict[str, Any]
    result: LoadResult | None = None
    error: str | None = None


@dataclass
class BenchSettings:
    attribution: AttributionSource = field(default_factory=HeaderAttribution)
    slo: dict[str, float] | None = None
    procs: int = 1
    progress: bool = True
    ignore_eos: bool = True
    headers: tuple[tuple[str, str], ...] = ()


def _progress_printer(total: int, label: str, enabled: bool) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A rich progress bar (requests done, RPS, errors); no-ops when disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        return (lambda done, errors: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rps]:>7.1f} req/s  errors {task.fields[errors]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        refresh_per_second=4,
    )
    task = progress.add_task(label, total=total, rps=0.0, errors=0)
    progress.start()
    t0 = time.perf_counter()

    def update(done: int, errors: int) -> None:
        el = time.perf_counter() - t0
        progress.update(task, completed=done, rps=done / el if el > 0 else 0.0, errors=errors)

    return update, progress.stop


def execute(
    prepared: PreparedWorkload,
    refs: dict[str, str],
    run: RunSpec,
    settings: BenchSettings,
    on_record: Callable[[RequestRecord], None] | None = None,
    log: Callable[[str], None] = print,
) -> RunOutcome:
    """One run: scrape, send, scrape, compute. Records stream to ``on_record`` as they finish."""
    make_body = BodyMaker(prepared.model, refs, ignore_eos=settings.ignore_eos)
    target = Target(run.urls, settings.attribution, settings.headers, run_id=f"bench-{run.label}")
    before = scrape(run.workers)
    update, stop = _progress_printer(len(prepared.requests), run.label, settings.progress)
    counts = [0, 0]

    def record(rec: RequestRecord) -> None:
        counts[0] += 1
        counts[1] += 0 if rec.ok else 1
        update(counts[0], counts[1])
        if on_record is not None:
            on_record(rec)

    result: LoadResult | None = None
    error = None
    try:
        if settings.procs > 1:
            result = run_load_procs(
                prepared.requests,
                make_body,
                target,
                run.shape,
                settings.procs,
                image_tokens=prepared.image_tokens,
                on_progress=update,
            )
            if on_record is not None:
                for rec in result.records:
                    on_record(rec)
        else:
            result = _run_async(prepared, make_body, target, run.shape, record)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        stop()
    after = scrape(run.workers)
    records = result.records if result is not None else []
    summary = summarize_run(prepared, run, settings, records, result, before, after)
    if result is not None and result.interrupted:
        error = "interrupted"
    if error:
        summary["error"] = error
    warn = summary.get("client_bound")
    if warn:
        log(
            f"warning: {run.label}: the client, not the server, may be the bottleneck ({warn}); "
            "use --procs N or a lower load"
        )
    return RunOutcome(run.label, run.description, records, summary, result, error)


def _run_async(
    prepared: PreparedWorkload,
    make_body: BodyMaker,
    target: Target,
    shape: LoadShape,
    record: Callable[[RequestRecord], None],
) -> LoadResult:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        return runner.run(
            run_load(prepared.requests, make_body, target, shape, image_tokens=prepared.image_tokens, on_record=record)
        )


def summarize_run(
    prepared: PreparedWorkload,
    run: RunSpec,
    settings: BenchSettings,
    records: Sequence[RequestRecord],
    result: LoadResult | None,
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
) -> dict[str, Any]:
    stats = run_stats(records, settings.slo)
    counted = [r for r in records if r.counted and r.ok]
    achieved = triad_mod.achieved([r.cached_tokens or 0 for r in counted], [r.prompt_tokens or 0 for r in counted])
    n_workers = len(run.workers) if run.workers else run.oracle_workers
    # The oracle sees the requests that were actually sent, in send order (a run cut short sent fewer).
    sent = {r.index for r in records}
    order = sorted((r.sent_s, r.index) for r in records)
    pos = {r.index: k for k, r in enumerate(prepared.requests)}
    counted_ok = {r.index for r in records if r.counted and r.ok}
    keys = [dataclasses.replace(prepared.keys[pos[i]], counted=i in counted_ok) for _, i in order if i in sent]
    oracle = triad_mod.oracle(keys, max(n_workers, 1), run.cache_blocks, prepared.block_size).rate
    theo = triad_mod.theoretical(keys, prepared.block_size).rate
    hits = queries = 0.0
    for name, samples in after.items():
        b = before.get(name, {})
        hits += samples.get("vllm:prefix_cache_hits_total", 0.0) - b.get("vllm:prefix_cache_hits_total", 0.0)
        queries += samples.get("vllm:prefix_cache_queries_total", 0.0) - b.get("vllm:prefix_cache_queries_total", 0.0)
    t = triad_mod.Triad(theo, oracle, achieved, hits / queries if queries else None)
    workers = per_worker(records, [w.name for w in run.workers])
    metric_requests = metrics_deltas(MetricsAttribution(), before, after) if after else {}
    worker_rows = []
    for w in workers:
        row = w.to_json()
        if w.name in metric_requests:
            row["metrics_requests"] = metric_requests[w.name]
            b, a = before.get(w.name, {}), after.get(w.name, {})
            dq = a.get("vllm:prefix_cache_queries_total", 0.0) - b.get("vllm:prefix_cache_queries_total", 0.0)
            dh = a.get("vllm:prefix_cache_hits_total", 0.0) - b.get("vllm:prefix_cache_hits_total", 0.0)
            row["metrics_hit_rate"] = dh / dq if dq else None
        worker_rows.append(row)
    if isinstance(settings.attribution, MetricsAttribution) and metric_requests:
        total = sum(metric_requests.values()) or 1.0
        hotspot = max(metric_requests.values()) / total * len(metric_requests)
    else:
        hotspot = hotspot_factor(workers)
    return {
        "label": run.label,
        "description": run.description,
        "target": list(run.urls),
        "workers": [w.name for w in run.workers],
        "shape": dataclasses.asdict(run.shape),
        "cache_blocks_per_worker": run.cache_blocks,
        "oracle_workers": n_workers,
        "stats": stats.to_json(),
        "triad": t.to_json(),
        "per_worker": worker_rows,
        "hotspot_factor": hotspot,
        "client": {
            "elapsed_s": result.elapsed_s if result else None,
            "cpu_s": result.cpu_s if result else None,
            "cpu_fraction": result.cpu_fraction if result else None,
            "procs": result.procs if result else settings.procs,
            "loop_lag_ms": result.loop_lag.to_json() if result else None,
        },
        "client_bound": result.client_bound if result else None,
        "interrupted": bool(result.interrupted) if result else False,
    }


# -- provenance ----------------------------------------------------------------------------------------------------
def provenance(argv: Sequence[str], seed: int) -> dict[str, Any]:
    import os
    import platform
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
            )
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) * 1024
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "argv": list(argv),
        "seed": seed,
        "versions": {
            "python": platform.python_version(),
            **{n: ver(n) for n in ("mmharness", "aiohttp", "numpy", "pandas", "matplotlib", "vllm")},
        },
        "hardware": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu": cpu,
            "cpu_count": os.cpu_count(),
            "memory_bytes": mem,
        },
    }


def geometry_for(model: str, family: str | None) -> ImageGeometry:
    try:
        return resolve_geometry(model, family=family)
    except Exception as exc:
        raise BenchError(f"no image geometry for --model {model!r}: {exc} (pass --mm-family)") from None


def workload_from(cfg: WorkloadConfig) -> list[RequestSpec]:
    from harness.load.workloads import generate

    return generate(cfg)
