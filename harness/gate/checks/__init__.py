"""Checks a gate runs against a live stack. Each yields a ``CheckResult`` that says what was expected and what
came back; failures carry the relevant log lines.

Every check has a *kind*, because a verdict depends on which kind failed:

- ``health``: the stack answered like a server at all (valid responses, right content). A health failure is a
  broken stack, never a routing verdict — not even for a degraded control.
- ``routing``: where requests went and what the cache made of it (co-location, cache hits, negative controls,
  the router's own records, behaviour under concurrency). A control is rejected only by one of these.
- ``config``: declarations such as the start-up line.
- ``metrics``: the workers' counters agree with what responses reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("health", "routing", "config", "metrics")


@dataclass
class CheckResult:
    name: str
    passed: bool | None  # None: not applicable to this stack
    expected: str
    actual: str
    kind: str = "routing"
    request_id: str | None = None
    logs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "n/a"}[self.passed]

    def describe(self) -> str:
        head = f"[{self.verdict}] ({self.kind}) {self.name}: expected {self.expected}; got {self.actual}"
        if self.request_id:
            head += f" (request_id={self.request_id})"
        if self.passed is False and self.logs:
            head += "".join(
                f"\n    --- {name} ---\n" + "\n".join(f"    {ln}" for ln in text.splitlines())
                for name, text in self.logs.items()
                if text
            )
        return head
