"""``harness bench`` command line: flags -> workload, load shape, targets; runs; report.

``harness bench CASE_ID [...]`` boots the case's stack (as ``harness stack up`` does), per policy with
``--compare``; ``harness bench --url URL [--worker-url URL ...]`` loads a stack that is already up. Bad input
ends with ``harness bench: --flag: what is wrong`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the parser is built on every `harness` call: keep numpy, PIL and aiohttp out of it
    from harness.load.bench import BenchSettings, PreparedWorkload, RunOutcome, RunSpec, WorkerInfo
    from harness.load.generator import LoadShape
    from harness.load.workloads import RequestSpec, WorkloadConfig
    from harness.report.bench import BenchReport

PAYLOAD_MODES = ("base64", "url", "asset")
PROXY_POLICIES = ("round_robin", "random", "least_loaded", "kv_text", "kv_mm")
DEFAULT_MODEL = "Qwen/Qwen3-VL-2B-Instruct"


class UsageError(ValueError):
    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("case", nargs="?", help="profile case id to boot (e.g. mm_agg_router_qwen3-vl-2b_4w)")
    t = p.add_argument_group("target")
    t.add_argument("--url", help="front door of a running stack (instead of CASE_ID)")
    t.add_argument("--worker-url", action="append", default=[], help="a worker behind it (repeat): /metrics, oracle")
    t.add_argument("--model", help="served model (default: the case's, or the first of the URL's /v1/models)")
    t.add_argument("--mm-family", help="model family for image-token counts, when the model id does not say")
    t.add_argument("--backend", choices=("sim", "vllm"), default="sim")
    t.add_argument("--workers", type=int, help="override the case's number of workers")
    t.add_argument("--sim-speedup", type=float, help="simulated workers' --speedup (default 1: realistic timing)")
    t.add_argument("--worker-args", help="extra worker arguments for the case's stack (HARNESS_EXTRA_WORKER_ARGS)")
    t.add_argument("--attribution", default="header", help="header[:NAME] | nvext | metrics (default header)")
    t.add_argument("--header", action="append", default=[], help="extra request header NAME:VALUE (repeat)")
    t.add_argument("--compare", help="policies/routers to compare, e.g. round_robin,kv_text,kv_mm,vllm-router")
    t.add_argument("--no-direct", action="store_true", help="leave out the direct-to-worker cell of --compare")
    w = p.add_argument_group("workload")
    w.add_argument("--requests", type=int, help="requests to send, warm-up included (default 200; a trace: all)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--input-len", default="64", help="text tokens per turn: N | uniform:A:B | normal:M:S | choice:..")
    w.add_argument("--output-len", default="32", help="output tokens (sent with ignore_eos)")
    w.add_argument("--images-per-request", default="1", help="images per user turn (a distribution)")
    w.add_argument("--resolutions", default="512x512", help="WxH[:weight],... (default 512x512)")
    w.add_argument("--formats", default="PNG", help="PNG|JPEG[:weight],...")
    w.add_argument("--contents", default="photo", help="solid|gradient|noise|photo[:weight],...")
    w.add_argument("--image-reuse", type=float, default=0.5, help="probability an image slot reuses one (0 = all new)")
    w.add_argument("--image-pool", type=int, help="at most this many distinct images")
    w.add_argument("--turns", default="1", help="turns per session (a distribution); earlier images carried forward")
    w.add_argument("--session-interleave", type=int, default=16)
    w.add_argument("--system-prompts", type=int, default=1, help="distinct shared system prompts (0 = none)")
    w.add_argument("--system-len", type=int, default=32, help="tokens per system prompt")
    w.add_argument("--lora-mix", help="ADAPTER:WEIGHT,... sent as model (the rest: the base model)")
    w.add_argument("--payload", default="base64", help=f"image transport: {' | '.join(PAYLOAD_MODES)}")
    w.add_argument("--asset-dir", help="asset directory for --payload asset (a case's stack is pointed at it)")
    w.add_argument("--trace", help="replay a JSONL trace (harness format or Mooncake-style) instead")
    w.add_argument("--trace-block-tokens", type=int, default=512, help="tokens per Mooncake hash id")
    w.add_argument("--trace-image-size", default="512x512", help="size of Mooncake image_ids images")
    w.add_argument("--save-workload", help="write the workload as a harness-format trace and go on")
    s = p.add_argument_group("load shape")
    s.add_argument(
        "--mode",
        choices=("closed", "open", "trace"),
        help="default: open with --rate, trace with a timestamped --trace, else closed",
    )
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--rate", type=float, help="open loop: requests per second")
    s.add_argument("--arrival", choices=("constant", "poisson"), default="poisson")
    s.add_argument("--max-in-flight", type=int)
    s.add_argument("--ramp-up", type=float, default=0.0, help="seconds; requests sent during it count as warm-up")
    s.add_argument("--warmup", type=int, default=0, help="first N requests: sent, not counted")
    s.add_argument("--duration", type=float, help="stop sending after S seconds (after ramp-up)")
    s.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    s.add_argument("--drain", type=float, default=30.0, help="seconds in-flight requests may finish after --duration")
    s.add_argument("--trace-speed", type=float, default=1.0, help="trace mode: replay this many times faster")
    s.add_argument("--sweep", help="concurrency=1,2,4,... or rate=5,10,...: one run per point, stops at saturation")
    s.add_argument("--sweep-stop", type=float, default=0.05, help="saturation: req/s gain below this fraction")
    s.add_argument("--procs", type=int, default=1, help="generator processes (when one core is not enough)")
    m = p.add_argument_group("measurement and report")
    m.add_argument("--slo", help="goodput SLOs, e.g. ttft=200ms,tpot=50ms (also itl, e2e)")
    m.add_argument("--block-size", type=int, default=16, help="prefix-cache block size of the workers")
    m.add_argument(
        "--cache-blocks",
        type=int,
        help="KV blocks per worker for the oracle (default: from the case or vllm:cache_config_info; else unbounded)",
    )
    m.add_argument("--oracle-workers", type=int, help="workers the oracle shards over when no --worker-url")
    m.add_argument("--out", help="report directory (default reports/<timestamp>)")
    m.add_argument("--no-progress", action="store_true")
    m.add_argument("--no-ignore-eos", action="store_true", help="let the model stop early")


# -- flags -> objects ---------------------------------------------------------------------------------------------
def workload_config(args: argparse.Namespace) -> WorkloadConfig:
    from harness.load.workloads import WorkloadConfig

    return WorkloadConfig(
        requests=args.requests if args.requests is not None else 200,
        seed=args.seed,
        input_len=args.input_len,
        output_len=args.output_len,
        images_per_request=args.images_per_request,
        resolutions=args.resolutions,
        formats=args.formats,
        contents=args.contents,
        image_reuse=args.image_reuse,
        image_pool=args.image_pool,
        turns=args.turns,
        session_interleave=args.session_interleave,
        system_prompts=args.system_prompts,
        system_len=args.system_len,
        lora_mix=args.lora_mix,
        payload=args.payload,
    )


def load_workload(args: argparse.Namespace) -> tuple[list[RequestSpec], dict[str, Any]]:
    from harness.load.workloads import generate

    cfg = workload_config(args)
    cfg.validate()
    if args.trace:
        from harness.load import traces
        from harness.load.workloads import parse_resolutions

        (size,) = parse_resolutions(args.trace_image_size, flag="--trace-image-size")
        reqs = traces.load(Path(args.trace), block_tokens=args.trace_block_tokens, image_size=size)
        if not reqs:
            raise UsageError("--trace", f"{args.trace} has no requests")
        if args.requests is not None:
            reqs = reqs[: args.requests]
        return reqs, {"trace": args.trace, "payload": cfg.payload}
    return generate(cfg), dataclasses.asdict(cfg)


def load_shape(args: argparse.Namespace, reqs: Sequence[RequestSpec]) -> LoadShape:
    from harness.load.generator import LoadShape

    mode = args.mode
    if mode is None:
        if args.rate is not None:
            mode = "open"
        elif args.trace and any(r.timestamp_s for r in reqs):
            mode = "trace"
        else:
            mode = "closed"
    if mode == "trace" and not any(r.timestamp_s is not None for r in reqs):
        raise UsageError("--mode", "trace mode needs a --trace with timestamps")
    shape = LoadShape(
        mode=mode,
        concurrency=args.concurrency,
        rate=args.rate,
        arrival=args.arrival,
        max_in_flight=args.max_in_flight,
        ramp_up_s=args.ramp_up,
        warmup=args.warmup,
        duration_s=args.duration,
        timeout_s=args.timeout,
        drain_s=args.drain,
        trace_speed=args.trace_speed,
        seed=args.seed,
    )
    shape.validate()
    if args.warmup >= len(reqs):
        raise UsageError("--warmup", f"{args.warmup} warm-up requests leave none of {len(reqs)} to measure")
    return shape


def parse_sweep(spec: str) -> tuple[str, list[float]]:
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or name not in ("concurrency", "rate"):
        raise UsageError("--sweep", "expected concurrency=1,2,4,... or rate=5,10,...")
    try:
        points = [float(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise UsageError("--sweep", f"bad number in {values!r}") from None
    if not points or any(v <= 0 for v in points):
        raise UsageError("--sweep", "points must be positive")
    return name, points


def parse_compare(spec: str) -> list[tuple[str, str, str | None]]:
    """``kv_mm,vllm-router:cache_aware`` -> [(label, router, policy)]."""
    out: list[tuple[str, str, str | None]] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, policy = item.partition(":")
        if name in PROXY_POLICIES:
            out.append((item, "proxy", name))
        elif name in ("vllm-router", "sglang-router"):
            out.append((item, name, policy or "cache_aware"))
        elif name == "direct":
            continue  # the direct cell is added by default
        else:
            raise UsageError(
                "--compare",
                f"unknown policy or router {name!r}; use {', '.join(PROXY_POLICIES)}, vllm-router, "
                "sglang-router (optionally ROUTER:POLICY)",
            )
    if not out:
        raise UsageError("--compare", "name at least one policy or router")
    return out


def _chat_url(url: str) -> str:
    url = url.rstrip("/")
    return url if "/v1/" in url else f"{url}/v1/chat/completions"


def _first_model(url: str) -> str | None:
    import httpx

    try:
        data = httpx.get(f"{url.rstrip('/')}/v1/models", timeout=5.0).json()
        return str(data["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return None


def sim_cache_blocks(case: Any, block_size: int) -> int | None:
    """KV blocks per simulated worker, as the engine sizes its cache from the case's byte cap."""
    if case.effective.backend != "sim":
        return None
    from harness.sim.model_specs import model_spec

    spec = model_spec(case.model.model)
    kv = case.effective.requested_kv_cache_bytes or 4 * 1024**3
    return int(kv // (spec.kv_bytes_per_token * block_size))


# -- the command -------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace, run_dir: Path, argv: Sequence[str]) -> int:
    from harness.load.bench import BenchError
    from harness.load.generator import ShapeError
    from harness.load.stats import SLOError
    from harness.load.workloads import WorkloadError

    try:
        return _main(args, run_dir, argv)
    except (UsageError, WorkloadError, ShapeError, SLOError, BenchError) as exc:
        flag = getattr(exc, "flag", None)
        msg = str(exc)
        print(f"harness bench: {flag + ': ' if flag and not msg.startswith(flag) else ''}{msg}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, run_dir: Path, argv: Sequence[str]) -> int:
    from harness.gate.attribution import parse_source
    from harness.load.bench import BenchError, BenchSettings, geometry_for, prepare, provenance, published_images
    from harness.load.stats import SLOError, parse_slo
    from harness.load.workloads import summarize
    from harness.report.bench import BenchReport, markdown_table, table_rows

    if bool(args.case) == bool(args.url):
        raise UsageError("CASE_ID/--url", "give a case id to boot or --url of a running stack (one of them)")
    if args.compare and not args.case:
        raise UsageError("--compare", "needs CASE_ID (each policy gets a freshly started stack)")
    if args.compare and args.sweep:
        raise UsageError("--sweep", "cannot be combined with --compare")
    if args.procs < 1:
        raise UsageError("--procs", "must be at least 1")
    if args.block_size < 1:
        raise UsageError("--block-size", "must be at least 1")
    try:
        attribution = parse_source(args.attribution)
    except ValueError as exc:
        raise UsageError("--attribution", str(exc)) from None
    slo = None
    if args.slo:
        try:
            slo = parse_slo(args.slo)
        except SLOError as exc:
            raise UsageError("--slo", str(exc)) from None
    headers = []
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep or not k.strip():
            raise UsageError("--header", f"expected NAME:VALUE, got {h!r}")
        headers.append((k.strip(), v.strip()))
    sweep = parse_sweep(args.sweep) if args.sweep else None
    compare = parse_compare(args.compare) if args.compare else None
    reqs, wl_config = load_workload(args)
    shape = load_shape(args, reqs)
    if args.save_workload:
        from harness.load import traces

        traces.save(Path(args.save_workload), reqs)
        print(f"workload saved to {args.save_workload}")

    case = None
    if args.case:
        from harness.profiles import default_profile_dir, find_case, load_profiles

        try:
            case = find_case(load_profiles(default_profile_dir(), backend=args.backend), args.case)
        except KeyError as exc:
            raise UsageError("CASE_ID", exc.args[0]) from None
        if args.workers is not None:
            if args.workers < 1:
                raise UsageError("--workers", "must be at least 1")
            case = dataclasses.replace(case, overrides={**case.overrides, "workers": args.workers})
        model = args.model or case.model.model
        family = args.mm_family or case.model.family
    else:
        model = args.model or _first_model(args.url) or ""
        if not model:
            raise UsageError("--model", f"not given and {args.url}/v1/models did not name one")
        family = args.mm_family
    geometry = geometry_for(model, family)
    prepared = prepare(
        reqs,
        model,
        geometry=geometry,
        block_size=args.block_size,
        warmup=args.warmup,
        config=wl_config,
        facts=summarize(reqs),
    )
    settings = BenchSettings(
        attribution=attribution,
        slo=slo,
        procs=args.procs,
        progress=not args.no_progress,
        ignore_eos=not args.no_ignore_eos,
        headers=tuple(headers),
    )
    config = {
        "shape": dataclasses.asdict(shape),
        "slo": slo,
        "procs": args.procs,
        "attribution": args.attribution,
        "model": model,
        "family": geometry.family.name,
        "block_size": args.block_size,
        "case": args.case,
        "url": args.url,
        "compare": args.compare,
        "sweep": args.sweep,
        "sim_speedup": args.sim_speedup,
    }
    report = BenchReport(
        run_dir,
        provenance(argv, args.seed),
        config,
        {"config": wl_config, "facts": prepared.facts, "theoretical": prepared.theoretical},
    )
    report.write(html=False)
    print(f"harness bench -> {run_dir}  (theoretical hit rate of the workload: {prepared.theoretical:.1%})")
    asset_dir = Path(args.asset_dir) if args.asset_dir else None
    if args.payload == "asset" and asset_dir is None and case is not None:
        asset_dir = Path(tempfile.mkdtemp(prefix="mmharness-assets-"))
    status = "complete"
    rc = 0
    try:
        with published_images(reqs, args.payload, asset_dir) as refs:
            runner = _Runner(prepared, refs, settings, report)
            if case is not None:
                ok = runner.case_runs(case, args, shape, compare, sweep, asset_dir)
            else:
                ok = runner.url_runs(args, shape, sweep)
            if not ok:
                status, rc = runner.status, runner.rc
    except KeyboardInterrupt:
        status, rc = "interrupted", 130
    except BenchError:
        status = "error"
        raise
    finally:
        report.status = status
        report.close()
        report.write()
    if rc == 0 and any(run.get("stats", {}).get("ok", 0) == 0 for run in report.runs):
        rc = 1  # a run in which no request succeeded measured nothing
    print(markdown_table(table_rows(report.to_json())))
    for run in report.runs:
        if run.get("client_bound"):
            print(f"warning: {run['label']}: client-bound ({run['client_bound']})")
    print(f"report: {run_dir / 'summary.md'}, {run_dir / 'report.html'}")
    return rc


class _Runner:
    """Runs the runs and keeps the report current after each."""

    def __init__(
        self, prepared: PreparedWorkload, refs: dict[str, str], settings: BenchSettings, report: BenchReport
    ) -> None:
        self.prepared = prepared
        self.refs = refs
        self.settings = settings
        self.report = report
        self.status = "complete"
        self.rc = 0

    def one(self, run: RunSpec) -> RunOutcome:
        from harness.load.bench import execute

        label = run.label
        self.report.open_records(label)

        def on_record(rec: Any) -> None:
            self.report.append_record(label, rec)

        outcome = execute(self.prepared, self.refs, run, self.settings, on_record=on_record)
        self.report.close_records(label, outcome.records)
        self.report.add_run(outcome.summary)
        self.report.write(html=False)
        s = outcome.summary["stats"]
        t = outcome.summary["triad"]
        print(
            f"{label}: {s['request_throughput']:.1f} req/s, TTFT p50 {_ms(s['ttft_ms'].get('p50'))}, "
            f"errors {sum(s['errors'].values())}/{s['requests']}, hit rate theoretical {t['theoretical']:.1%} "
            f"oracle {t['oracle']:.1%} achieved {t['achieved']:.1%}",
            flush=True,
        )
        if outcome.error == "interrupted":
            self.status, self.rc = "interrupted", 130
            raise KeyboardInterrupt
        return outcome

    def points(
        self, base: RunSpec, sweep: tuple[str, list[float]] | None, before_point: Callable[[], None] | None = None
    ) -> bool:
        if sweep is None:
            self.one(base)
            return self.rc == 0
        name, values = sweep
        best = 0.0
        for k, v in enumerate(values):
            if k and before_point is not None:
                before_point()
            if name == "concurrency":
                shape = dataclasses.replace(base.shape, mode="closed", concurrency=int(v))
                label = f"c={int(v)}"
            else:
                shape = dataclasses.replace(base.shape, mode="open", rate=v)
                label = f"rate={v:g}"
            out = self.one(dataclasses.replace(base, label=label, shape=shape))
            s = out.summary["stats"]
            rps = s["request_throughput"]
            saturated = None
            if s["error_rate"] > 0.10:
                saturated = f"error rate {s['error_rate']:.0%}"
            elif name == "rate" and rps < 0.9 * v:
                saturated = f"achieved {rps:.1f} req/s of {v:g} offered"
            elif k and rps < best * (1 + self.report.config.get("sweep_stop", 0.05)):
                saturated = f"req/s gain below {self.report.config.get('sweep_stop', 0.05):.0%}"
            best = max(best, rps)
            if saturated:
                self.report.notes.append(f"sweep stopped at {label}: saturated ({saturated})")
                print(f"sweep: saturated at {label} ({saturated})")
                break
        return True

    def url_runs(self, args: argparse.Namespace, shape: LoadShape, sweep: tuple[str, list[float]] | None) -> bool:
        from harness.load.bench import RunSpec, cache_blocks_from_metrics, discover_workers

        self.report.config["sweep_stop"] = args.sweep_stop
        workers = discover_workers(args.worker_url) if args.worker_url else []
        blocks = args.cache_blocks or cache_blocks_from_metrics(workers)
        run = RunSpec(
            label="run",
            urls=(_chat_url(args.url),),
            workers=workers,
            shape=shape,
            description=f"{args.url}" + (f" with workers {', '.join(w.name for w in workers)}" if workers else ""),
            cache_blocks=blocks,
            oracle_workers=args.oracle_workers or max(len(workers), 1),
        )
        if blocks is None:
            self.report.notes.append("oracle with unbounded caches (no --cache-blocks, no vllm:cache_config_info)")
        reset = functools.partial(_reset, workers, self.report) if workers else None
        return self.points(run, sweep, before_point=reset)

    def case_runs(
        self,
        case: Any,
        args: argparse.Namespace,
        shape: LoadShape,
        compare: list[tuple[str, str, str | None]] | None,
        sweep: tuple[str, list[float]] | None,
        asset_dir: Path | None,
    ) -> bool:
        from harness.load.bench import RunSpec, cache_blocks_from_metrics, discover_workers
        from harness.report.bench import safe_label
        from harness.stack.launch import LaunchError, launched

        self.report.config["sweep_stop"] = args.sweep_stop
        env: dict[str, str] = {}
        if args.sim_speedup is not None:
            env["HARNESS_SIM_SPEEDUP"] = f"{args.sim_speedup:g}"
        if args.worker_args:
            env["HARNESS_EXTRA_WORKER_ARGS"] = args.worker_args
        if asset_dir is not None:
            env["HARNESS_ASSET_DIR"] = str(asset_dir)
        blocks = args.cache_blocks or sim_cache_blocks(case, args.block_size)
        entries: list[tuple[str, str | None, str | None]]
        if compare:
            entries = [(label, router, policy) for label, router, policy in compare]
            if not args.no_direct:
                entries.append(("direct", None, None))
        else:
            t = case.effective
            entries = [(t.policy or t.router, None, None)]
        log_root = Path(self.report.root) / "logs"
        log_root.mkdir(parents=True, exist_ok=True)
        for label, router, policy in entries:
            variant = case
            if router is not None:
                over = {**case.overrides, "router": router, "policy": policy, "expect": "pass"}
                variant = dataclasses.replace(case, overrides=over)
            logs = log_root / safe_label(label)  # variants share the case id, hence the log names
            logs.mkdir(parents=True, exist_ok=True)
            try:
                with launched(variant, logs, extra_env=env) as stack:
                    workers = discover_workers(stack.worker_urls)
                    direct = compare is not None and router is None
                    urls = tuple(_chat_url(u) for u in stack.worker_urls) if direct else (_chat_url(stack.url),)
                    t = variant.effective
                    desc = (
                        f"direct to {len(workers)} worker(s), client-side round robin, no router"
                        if direct
                        else f"{t.router} {t.policy or ''} over {len(workers)} worker(s) ({variant.id})"
                    )
                    run = RunSpec(
                        label,
                        urls,
                        workers,
                        shape,
                        desc.strip(),
                        blocks or cache_blocks_from_metrics(workers),
                        oracle_workers=max(len(workers), 1),
                    )
                    self.points(run, sweep, before_point=functools.partial(_reset, workers, self.report))
            except LaunchError as exc:
                self.report.notes.append(f"{label}: stack did not come up: {str(exc).splitlines()[0]}")
                print(f"harness bench: {label}: {exc}", file=sys.stderr)
                self.status, self.rc = "error", 1
                if compare is None:
                    return False
        return self.rc == 0


def _reset(workers: Sequence[WorkerInfo], report: BenchReport) -> None:
    from harness.load.bench import reset_caches

    if not reset_caches(workers):
        report.notes.append("a sweep point's prefix-cache reset failed: later points may start warm")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"
