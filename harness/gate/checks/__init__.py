"""Checks a gate runs against a live stack. Each yields a ``CheckResult`` that says what was expected and what
came back; failures carry the relevant log lines.

A check is pass, fail or not applicable (``passed is None``), and an n/a always says why. Every check has a
*kind*, because a verdict depends on which kind failed:

- ``health``: the stack answered like a server at all (valid responses, right content). A health failure is a
  broken stack, never a routing verdict — not even for a degraded control.
- ``routing``: where requests went and what the cache made of it (co-location, cache hits, negative controls,
  the router's own records and their agreement with the workers, behaviour under concurrency). A control is
  rejected only by one of these.
- ``config``: declarations and calibration: the start-up line, the reference formulas against published values,
  the stack's image-token count and render endpoint against the reference.
- ``metrics``: the workers' counters agree with what responses reported.
- ``evidence``: a check the topology must produce came back n/a ("insufficient evidence"). It fails a case, but
  it never rejects a control: missing evidence is not a verdict on routing.

``source`` says which evidence a check used (the worker attribution source, or where its threshold came from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["health", "routing", "config", "metrics", "evidence"]
KINDS: tuple[str, ...] = ("health", "routing", "config", "metrics", "evidence")


@dataclass
class CheckResult:
    name: str
    passed: bool | None  # None: not applicable to this stack; ``actual`` says why
    expected: str
    actual: str
    kind: str = "routing"
    request_id: str | None = None
    logs: dict[str, str] = field(default_factory=dict)
    #: The evidence the verdict rests on: an attribution source (``header:X-Served-By``, ``metrics``, ...) or a
    #: threshold's origin (``reference``, ``probe``, ``stack render``).
    source: str | None = None
    #: The suite whose scenario step produced it (``pre_merge`` or ``post_merge``).
    suite: str = "pre_merge"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"check kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "n/a"}[self.passed]

    def describe(self) -> str:
        head = f"[{self.verdict}] ({self.kind}) {self.name}: expected {self.expected}; got {self.actual}"
        if self.source:
            head += f" [source: {self.source}]"
        if self.request_id:
            head += f" (request_id={self.request_id})"
        if self.passed is False and self.logs:
            head += "".join(
                f"\n    --- {name} ---\n" + "\n".join(f"    {ln}" for ln in text.splitlines())
                for name, text in self.logs.items()
                if text
            )
        return head

    def record(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "verdict": self.verdict,
            "expected": self.expected,
            "actual": self.actual,
            "request_id": self.request_id,
            "source": self.source,
            "suite": self.suite,
        }


def not_applicable(name: str, why: str, kind: str = "routing", expected: str = "-", **kw: object) -> CheckResult:
    """An n/a with its reason (``actual``): never a pass, and a failure where the topology requires the check."""
    return CheckResult(name, None, expected, why, kind, **kw)  # type: ignore[arg-type]
