"""Checks on the router's own account of itself: its start-up declaration, its per-request records, and whether
they agree with what the workers did.

A router declared to keep ``[ROUTING]`` records (``RouterCapabilities.records``) must have one for every request
the gate checks by record: a missing record is a failure, not an n/a. A router that keeps none makes these
checks n/a, with that reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from harness.contract import RoutingRecord, parse_mm_startup, records_for
from harness.gate.checks import CheckResult, not_applicable
from harness.gate.checks.replies import Reply
from harness.gate.oracle import cache_hit_cap

STARTUP = "MM-aware routing start-up line"
SPARES_NEW_IMAGE = "router does not claim the new image's blocks"
COVERS_PROMPT = "router keys the whole prompt as the workers expand it"
CLAIMS_MATCH = "router's claimed overlap does not exceed the worker's cache"
BLOCK_SIZE = "router and workers agree on the block size"
FORGETS = "router forgets blocks the workers evicted"
REF_COVERS = "router keys the whole prompt as the reference expands it"
REPEAT_CLAIMS = "router claims the repeat's blocks on the first's worker"
TRANSPORT_CLAIMS = "router claims the same image sent by the other transport"
BURST_CLAIMS = "router claims the concurrent repeats' blocks on the first's worker"
#: The n/a reason of the checks that compare the router's image expansion or claims with the engine's numbers.
IMAGE_BLIND = (
    "the engine ignores image content (declared): its prompt_tokens and cached_tokens count no image tokens, so "
    "they cannot judge the router's image expansion or image claims (the router's records are judged against "
    "the reference instead)"
)


def record_blocks(tokens: int, block_size: int, fmt: str) -> int:
    """The ``total_blocks`` a record of a ``tokens``-token key carries, in the record format's own convention:
    the harness proxy counts whole blocks (the blocks it hashes); Dynamo counts the partial last block too
    (``routing_token_ids.len().div_ceil(block_size)`` before its ``[ROUTING] Best`` line in
    ``lib/llm/src/kv_router/push_router.rs``)."""
    return -(-tokens // block_size) if fmt == "dynamo" else tokens // block_size


def startup_line_check(
    router_log: str, model: str, block_size: int, declared: bool, served_paths: Sequence[str] = ()
) -> CheckResult:
    """The start-up line names the served model (its id, or a model path the launch script announced it served:
    ``HARNESS_SERVED_MODEL``) and, where the line states one, the block size every component was started with.
    A line without a block size (Dynamo 1.6.1's ``MM-aware KV routing enabled model=<dir> model_dir=...``) is
    judged on the model; its block-size half is n/a, and ``router and workers agree on the block size`` then
    reads the router's block size from its records."""
    if not declared:
        return not_applicable(STARTUP, "the router does not declare an MM-aware start-up line", "config")
    line = parse_mm_startup(router_log)
    expected = f"'MM-aware KV routing enabled model={model} block_size={block_size}' in the router log"
    if served_paths:
        expected += f" (model may be the served path {', '.join(served_paths)})"
    if line is None:
        return CheckResult(
            STARTUP, False, expected, "absent: the router does not put images in its routing key", "config"
        )
    problems = []
    # A router started on a local model directory names the directory: the same model when its last component is,
    # or when it is the directory the launch script says it served.
    named = line.model.rstrip("/")
    known = named == model or named.rsplit("/", 1)[-1] == model.rsplit("/", 1)[-1]
    if not known and named not in {p.rstrip("/") for p in served_paths}:
        also = f" nor {', '.join(served_paths)}" if served_paths else ""
        problems.append(f"model={line.model} (not {model}{also})")
    if line.block_size is None:
        size = "block_size not stated (n/a for this half: see 'router and workers agree on the block size')"
    elif line.block_size != block_size:
        problems.append(f"block_size={line.block_size} (not {block_size})")
        size = ""
    else:
        size = f"block_size={line.block_size}"
    return CheckResult(
        STARTUP,
        not problems,
        expected,
        "; ".join(problems) if problems else f"found model={line.model} {size}",
        "config",
        source="router log" + (" + HARNESS_SERVED_MODEL" if served_paths else ""),
    )


def record_of(router_log: str, reply: Reply) -> RoutingRecord | None:
    recs = records_for(router_log, reply.request_id)
    return recs[-1] if recs else None


def _missing(name: str, reply: Reply) -> CheckResult:
    return CheckResult(
        name,
        False,
        "a [ROUTING] record with this request's id (the router is declared to keep records)",
        "no record for this request id",
        "routing",
        reply.request_id,
        source="router log",
    )


def record_claims_at_most(
    name: str, router_log: str, reply: Reply, allowed_blocks: int, keeps_records: bool, why: str
) -> CheckResult:
    """The router's record of ``reply`` claims no more overlap than ``allowed_blocks`` (a negative control: the
    blocks from the first differing token on cannot be anywhere)."""
    if not keeps_records:
        return not_applicable(name, "the router keeps no routing records", request_id=reply.request_id)
    rec = record_of(router_log, reply)
    if rec is None:
        return _missing(name, reply)
    ok = rec.overlap_blocks <= allowed_blocks and (rec.total_blocks == 0 or rec.overlap_blocks < rec.total_blocks)
    return CheckResult(
        name,
        ok,
        f"overlap_blocks <= {allowed_blocks} ({why}) and < total_blocks",
        f"overlap_blocks={rec.overlap_blocks} total_blocks={rec.total_blocks} worker={rec.worker}",
        "routing",
        reply.request_id,
        source="router log",
    )


def record_spares_new_image(
    router_log: str, reply: Reply, image_offset: int, block_size: int, keeps_records: bool = True
) -> CheckResult:
    """The router's record of a different-image request must not claim the new image's blocks."""
    return record_claims_at_most(
        SPARES_NEW_IMAGE, router_log, reply, image_offset // block_size, keeps_records, "blocks before the image"
    )


def router_covers_prompt(
    router_log: str, replies: Sequence[Reply], router_block: int, keeps_records: bool, engine_sees_images: bool = True
) -> CheckResult:
    """Each record's ``total_blocks`` is the number of full blocks of the prompt *as the worker counted it*
    (``prompt_tokens``): a router that expands images differently from its workers (the bug class of Dynamo PR
    #9441), or that drops the placeholders, keys blocks the workers never store."""
    if not keeps_records:
        return not_applicable(COVERS_PROMPT, "the router keeps no routing records")
    if not engine_sees_images:
        return not_applicable(COVERS_PROMPT, IMAGE_BLIND)
    bad, missing, checked = [], [], 0
    for r in replies:
        if r.status != 200 or not r.prompt_tokens:
            continue
        rec = record_of(router_log, r)
        if rec is None:
            missing.append(r.tag)
            continue
        checked += 1
        want = record_blocks(r.prompt_tokens, router_block, rec.format)
        if rec.total_blocks != want:
            what = "no routing key at all" if rec.total_blocks == 0 else f"total_blocks={rec.total_blocks}"
            bad.append(f"{r.tag}: {what}, prompt_tokens={r.prompt_tokens} -> {want}")
    if missing:
        return CheckResult(
            COVERS_PROMPT,
            False,
            "a [ROUTING] record for every request (the router is declared to keep records)",
            f"no record for {', '.join(missing[:5])}",
            "routing",
            source="router log",
        )
    return CheckResult(
        COVERS_PROMPT,
        checked > 0 and not bad,
        f"total_blocks == the blocks of prompt_tokens at {router_block} for each of {checked} requests",
        "; ".join(bad[:4]) or f"all {checked} agree",
        "routing",
        source="router log",
    )


def router_claims_match_workers(
    router_log: str, replies: Sequence[Reply], block_size: int, keeps_records: bool, engine_sees_images: bool = True
) -> CheckResult:
    """The overlap a router claims for a request is no more than what the worker it chose then served from its
    cache (capped as vLLM caps it), and the record names the worker that served it. Over-claiming is what a
    router does when its key merges content the workers keep apart (text-only keys, the first image only, no
    LoRA in the key) or when its index outlives the workers' caches."""
    if not keeps_records:
        return not_applicable(CLAIMS_MATCH, "the router keeps no routing records")
    if not engine_sees_images:
        return not_applicable(CLAIMS_MATCH, IMAGE_BLIND)
    bad, checked = [], 0
    for r in replies:
        if r.status != 200 or r.cached_tokens is None:
            continue
        rec = record_of(router_log, r)
        if rec is None:
            continue  # ``router_covers_prompt`` fails a missing record
        checked += 1
        claimed = min(rec.overlap_blocks * block_size, cache_hit_cap(r.prompt_tokens, block_size))
        if claimed > r.cached_tokens:
            bad.append(f"{r.tag}: claimed {rec.overlap_blocks} blocks ({claimed} tokens), cached {r.cached_tokens}")
        elif r.served_by and r.attributed_by != "metrics" and rec.worker != r.served_by:
            bad.append(f"{r.tag}: record says {rec.worker}, served by {r.served_by}")
    return CheckResult(
        CLAIMS_MATCH,
        checked > 0 and not bad,
        f"min(overlap_blocks x {block_size}, cache cap) <= cached_tokens, on the recorded worker, for every request",
        "; ".join(bad[:4]) or f"all {checked} agree",
        "routing",
        source="router log + responses",
    )


def record_forgets_evicted(
    router_log: str, reply: Reply, block_size: int, keeps_records: bool, event_fed: bool
) -> CheckResult:
    """``reply`` repeats a prompt the workers held, sent after every worker cleared its prefix cache (which
    publishes AllBlocksCleared): the router's record may claim no more than the chosen worker then served from
    its cache. An event-fed index that ignores removals and clears keeps claiming the old blocks, steering
    requests to workers for a cache they no longer hold."""
    if not keeps_records:
        return not_applicable(FORGETS, "the router keeps no routing records", request_id=reply.request_id)
    if not event_fed:
        why = "the router only predicts what workers cache (no KV events): it cannot see an eviction"
        return not_applicable(FORGETS, why, request_id=reply.request_id)
    rec = record_of(router_log, reply)
    if rec is None:
        return _missing(FORGETS, reply)
    if reply.cached_tokens is None:
        why = "the response reports no cached_tokens to compare the claim with"
        return not_applicable(FORGETS, why, request_id=reply.request_id)
    claimed = min(rec.overlap_blocks * block_size, cache_hit_cap(reply.prompt_tokens, block_size))
    return CheckResult(
        FORGETS,
        claimed <= reply.cached_tokens,
        f"after every worker's prefix cache was cleared, min(overlap_blocks x {block_size}, cache cap) <= "
        "cached_tokens",
        f"overlap_blocks={rec.overlap_blocks} ({claimed} tokens) cached_tokens={reply.cached_tokens} "
        f"worker={rec.worker}",
        "routing",
        reply.request_id,
        source="router log + responses",
    )


def block_size_agrees(
    router_block: int | None, workers: Mapping[str, tuple[int | None, str]], declared_startup: bool
) -> CheckResult:
    """The router's declared block size (its start-up line) equals every worker's (``vllm:cache_config_info``,
    or the fallback source named): a router hashing 16-token blocks in front of 32-token workers predicts hits
    on blocks that do not exist."""
    if router_block is None:
        # n/a, not a failure: the start-up line check fails the missing line itself, and where the topology
        # declares the line, the evidence rules turn this n/a into "insufficient evidence".
        del declared_startup
        return not_applicable(BLOCK_SIZE, "no start-up line to read the router's block size from")
    known = {name: v for name, v in workers.items() if v[0] is not None}
    if not known:
        return not_applicable(BLOCK_SIZE, "no worker reports its block size", expected=f"workers at {router_block}")
    bad = [f"{n}={v} ({src})" for n, (v, src) in known.items() if v != router_block]
    return CheckResult(
        BLOCK_SIZE,
        not bad,
        f"every worker's block size == the router's {router_block}",
        "; ".join(bad) or ", ".join(f"{n}={v} ({src})" for n, (v, src) in known.items()),
        "routing",
        source="router log + " + ", ".join(sorted({src for _, src in known.values()})),
    )


def block_size_from_records(
    router_log: str, text_replies: Sequence[Reply], block_size: int, keeps_records: bool
) -> CheckResult:
    """For a router whose start-up line states no block size: its records of *text-only* requests (no image
    expansion involved, and every engine counts text) against the engine's ``prompt_tokens`` at the declared
    block size, the one the launch script gave the workers. A router hashing 32-token blocks in front of
    16-token workers records about half the blocks."""
    if not keeps_records:
        return not_applicable(BLOCK_SIZE, "no start-up line states the router's block size, and it keeps no records")
    bad, missing, seen = [], [], []
    for r in text_replies:
        if r.status != 200 or not r.prompt_tokens:
            continue
        rec = record_of(router_log, r)
        if rec is None:
            missing.append(r.tag)
            continue
        want = record_blocks(r.prompt_tokens, block_size, rec.format)
        seen.append(f"{r.tag}: {rec.total_blocks} blocks for {r.prompt_tokens} tokens")
        if rec.total_blocks != want:
            bad.append(f"{r.tag}: total_blocks={rec.total_blocks}, {r.prompt_tokens} tokens at {block_size} -> {want}")
    if missing:
        return _missing_many(BLOCK_SIZE, missing)
    if not seen:
        return not_applicable(
            BLOCK_SIZE, "no start-up line states the router's block size, and no text-only request has a record"
        )
    return CheckResult(
        BLOCK_SIZE,
        not bad,
        f"the router's records of text-only requests count blocks of {block_size} (the declared block size the "
        "workers were started with; the start-up line states none)",
        "; ".join(bad or seen),
        "routing",
        source="router records (text-only requests) + declared block size",
    )


def router_covers_reference(
    router_log: str, expanded: Sequence[tuple[Reply, int | None]], block_size: int, keeps_records: bool
) -> CheckResult:
    """For an engine blind to images: each record's ``total_blocks`` is the block count of the prompt *as the
    reference expands it* (the engine's text tokens plus the reference's image-token count per image, in place
    of the engine's own placeholders). A router that expands images unlike the model (Dynamo PR #9441's bug
    class), or leaves an image out of its key, fails."""
    if not keeps_records:
        return not_applicable(REF_COVERS, "the router keeps no routing records")
    bad, missing, checked = [], [], 0
    for r, tokens in expanded:
        if r.status != 200 or tokens is None:
            continue
        rec = record_of(router_log, r)
        if rec is None:
            missing.append(r.tag)
            continue
        checked += 1
        want = record_blocks(tokens, block_size, rec.format)
        if rec.total_blocks != want:
            bad.append(f"{r.tag}: total_blocks={rec.total_blocks}, reference {tokens} tokens -> {want}")
    if missing:
        return _missing_many(REF_COVERS, missing)
    if not checked:
        return not_applicable(REF_COVERS, "no request with a reference expansion (the image-token probe failed)")
    return CheckResult(
        REF_COVERS,
        not bad,
        f"total_blocks == the blocks of the reference expansion at {block_size} for each of {checked} requests",
        "; ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "") or f"all {checked} agree",
        "routing",
        source="router log + reference",
    )


def record_claims_at_least(
    name: str,
    router_log: str,
    reply: Reply,
    min_blocks: int,
    keeps_records: bool,
    why: str,
    worker: str | None = None,
) -> CheckResult:
    """The router's record of ``reply`` claims at least ``min_blocks`` blocks of overlap (the blocks a cached
    copy of its prompt holds, by the reference), on ``worker`` where one is given: a positive control, judged by
    the router's own account, so it holds on an engine that ignores images."""
    if not keeps_records:
        return not_applicable(name, "the router keeps no routing records", request_id=reply.request_id)
    rec = record_of(router_log, reply)
    if rec is None:
        return _missing(name, reply)
    ok = rec.overlap_blocks >= min_blocks and (worker is None or rec.worker == worker)
    where = f" on {worker}" if worker else ""
    return CheckResult(
        name,
        ok,
        f"overlap_blocks >= {min_blocks} ({why}){where}",
        f"overlap_blocks={rec.overlap_blocks} total_blocks={rec.total_blocks} worker={rec.worker}",
        "routing",
        reply.request_id,
        source="router log + reference",
    )


def burst_records_claim(
    router_log: str, replies: Sequence[Reply], min_blocks: int, home: str | None, keeps_records: bool
) -> CheckResult:
    """Concurrent copies of a cached request: each record claims the cached blocks, on the worker holding them
    (``home``, the first request's recorded worker). A router whose index never matches (Dynamo's KV events
    against the mockers' hashes) claims 0 and scatters."""
    if not keeps_records:
        return not_applicable(BURST_CLAIMS, "the router keeps no routing records")
    recs, missing = [], []
    for r in replies:
        rec = record_of(router_log, r) if r.status == 200 else None
        if rec is None:
            missing.append(r.tag)
        else:
            recs.append(rec)
    if missing:
        return _missing_many(BURST_CLAIMS, missing)
    if home is None:
        return not_applicable(BURST_CLAIMS, "the first request has no record to name its worker")
    short = [rec for rec in recs if rec.overlap_blocks < min_blocks or rec.worker != home]
    claims = sorted(rec.overlap_blocks for rec in recs)
    spread = Counter(rec.worker for rec in recs)
    return CheckResult(
        BURST_CLAIMS,
        bool(recs) and not short,
        f"each of {len(replies)} concurrent repeats recorded with overlap_blocks >= {min_blocks} on {home}",
        f"overlap_blocks {claims}; recorded workers {dict(spread)}",
        "routing",
        (replies[0].request_id if replies else None),
        source="router log + reference",
    )


def _missing_many(name: str, tags: Sequence[str]) -> CheckResult:
    return CheckResult(
        name,
        False,
        "a [ROUTING] record for every request (the router is declared to keep records)",
        f"no record for {', '.join(tags[:5])}",
        "routing",
        source="router log",
    )
