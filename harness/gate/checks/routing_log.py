"""Parse routing decisions from router logs: the harness's record contract and Dynamo's format.

Both carry numbers, and the checks compare numbers (``19 < 20``), never digit counts or string order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ``[ROUTING] request_id=<id> worker=<name> overlap_blocks=<x> total_blocks=<m> policy=<p>``
HARNESS_RE = re.compile(
    r"\[ROUTING\] request_id=(?P<rid>\S+) worker=(?P<worker>\S+) overlap_blocks=(?P<overlap>\d+) "
    r"total_blocks=(?P<total>\d+) policy=(?P<policy>\S+)"
)
#: ``[ROUTING] Best: worker_<id> dp_rank=0 with 19/20 blocks overlap request_id=<id> ...``
DYNAMO_RE = re.compile(
    r"\[ROUTING\] Best: (?P<worker>worker_\S+)(?: dp_rank=\S+)? with (?P<overlap>\d+)/(?P<total>\d+) blocks overlap"
    r"(?:.*?request_id=(?P<rid>[^\s,]+))?"
)
STARTUP_RE = re.compile(r"MM-aware KV routing enabled model=(?P<model>\S+)(?: block_size=(?P<block_size>\d+))?")


@dataclass(frozen=True)
class RoutingRecord:
    request_id: str | None
    worker: str
    overlap_blocks: int
    total_blocks: int
    policy: str | None
    format: str

    @property
    def overlap_ratio(self) -> float:
        return self.overlap_blocks / self.total_blocks if self.total_blocks else 0.0


def parse_routing_records(text: str) -> list[RoutingRecord]:
    records = []
    for line in text.splitlines():
        if "[ROUTING]" not in line:
            continue
        m = HARNESS_RE.search(line)
        if m:
            records.append(
                RoutingRecord(m["rid"], m["worker"], int(m["overlap"]), int(m["total"]), m["policy"], "harness")
            )
            continue
        m = DYNAMO_RE.search(line)
        if m:
            records.append(RoutingRecord(m["rid"], m["worker"], int(m["overlap"]), int(m["total"]), None, "dynamo"))
    return records


def records_for(text: str, request_id: str) -> list[RoutingRecord]:
    """The records of one request only; other requests' decisions never leak into a check."""
    return [r for r in parse_routing_records(text) if r.request_id == request_id]


def startup_line(text: str) -> dict[str, str | None] | None:
    m = STARTUP_RE.search(text)
    return m.groupdict() if m else None
