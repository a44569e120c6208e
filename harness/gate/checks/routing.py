"""Checks on the router's own account of itself: its start-up declaration and its per-request records."""

from __future__ import annotations

from harness.contract import parse_mm_startup, records_for
from harness.gate.checks import CheckResult
from harness.gate.checks.replies import Reply


def startup_line_check(router_log: str, model: str, follows_contract: bool) -> CheckResult:
    name = "MM-aware routing start-up line"
    if not follows_contract:
        return CheckResult(
            name,
            None,
            "a router that logs the routing-record contract",
            "no [ROUTING] records: judged by behaviour only",
            "config",
        )
    line = parse_mm_startup(router_log)
    return CheckResult(
        name,
        line is not None,
        f"'MM-aware KV routing enabled model={model} ...' in the router log",
        f"found {line}" if line else "absent: the router does not put images in its routing key",
        "config",
    )


def record_spares_new_image(router_log: str, reply: Reply, image_offset: int, block_size: int) -> CheckResult:
    """The router's record of a different-image request must not claim the new image's blocks."""
    name = "router does not claim the new image's blocks"
    recs = records_for(router_log, reply.request_id)
    if not recs:
        return CheckResult(
            name, None, "a [ROUTING] record for the request", "router keeps no records", "routing", reply.request_id
        )
    rec = recs[-1]
    allowed = image_offset // block_size
    ok = rec.overlap_blocks <= allowed and (rec.total_blocks == 0 or rec.overlap_blocks < rec.total_blocks)
    return CheckResult(
        name,
        ok,
        f"overlap_blocks <= {allowed} (blocks before the image) and < total_blocks",
        f"overlap_blocks={rec.overlap_blocks} total_blocks={rec.total_blocks} worker={rec.worker}",
        "routing",
        reply.request_id,
    )
