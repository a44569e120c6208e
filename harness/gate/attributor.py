"""Which worker served each gate request, by the sources the topology declares, each answer naming its source.

Wraps ``harness.gate.attribution`` (header, Dynamo nvext, request-counter deltas) and adds the fourth source,
worker log lines by request id. Per-response sources (header, nvext) are tried first; then the workers' logs;
then, for a request sent on its own, the request counters of every worker scraped around it (exact when nothing
else runs; for a burst they give counts per worker, not identities). A request no declared source can attribute
stays unattributed, and checks that need attribution are n/a for it, never failed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.gate.attribution import HeaderAttribution, MetricsAttribution, NvextAttribution, metrics_deltas
from harness.gate.attribution import request_fields as _request_fields
from harness.gate.attribution import worker_of as _worker_of
from harness.profiles import RouterCapabilities

Scrape = Callable[[], dict[str, dict[str, float]]]
#: How long a worker may take to write a request's log line after answering it.
LOG_WAIT_S = 2.0


class Attributor:
    def __init__(self, caps: RouterCapabilities, worker_logs: Sequence[Path], scrape: Scrape) -> None:
        self.sources = tuple(caps.attribution)
        self.header = HeaderAttribution(caps.served_by_header)
        self.nvext = NvextAttribution()
        self.counter = MetricsAttribution()
        self.worker_logs = list(worker_logs)
        self.scrape = scrape

    @property
    def per_request_counters(self) -> bool:
        return "metrics" in self.sources

    def request_fields(self) -> dict[str, Any]:
        return _request_fields(self.nvext) if "nvext" in self.sources else {}

    def from_response(self, headers: Mapping[str, str], body: Any) -> tuple[str | None, str | None]:
        for source in self.sources:
            if source == "header":
                name = _worker_of(self.header, headers, None)
                if name:
                    return name, f"header:{self.header.header}"
            elif source == "nvext" and isinstance(body, Mapping):
                name = _worker_of(self.nvext, headers, body)
                if name:
                    return name, "nvext"
        return None, None

    def from_logs(self, request_id: str, wait_s: float = LOG_WAIT_S) -> str | None:
        """The worker whose log names ``request_id`` (waits until one does, up to ``wait_s``)."""
        if "logs" not in self.sources or not self.worker_logs:
            return None
        pattern = re.compile(rf"request_id={re.escape(request_id)}\b|{re.escape(request_id)}")
        deadline = time.monotonic() + wait_s
        while True:
            for i, path in enumerate(self.worker_logs):
                if path.exists() and pattern.search(path.read_text(errors="replace")):
                    return f"worker{i}"
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def from_counters(self, before: Mapping[str, Mapping[str, float]]) -> tuple[str | None, dict[str, float]]:
        """The one worker whose request counter moved since ``before`` (None if none or several did)."""
        deltas = metrics_deltas(self.counter, before, self.scrape())
        moved = [name for name, d in deltas.items() if d > 0]
        return (moved[0] if len(moved) == 1 else None), deltas

    def counts(self, before: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        return metrics_deltas(self.counter, before, self.scrape())
