"""Checks a gate runs against a live stack. Each yields a ``CheckResult`` that says what was expected and
what came back; failures carry the relevant log lines."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CheckResult:
    name: str
    passed: bool | None  # None: not applicable to this stack
    expected: str
    actual: str
    request_id: str | None = None
    logs: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "n/a"}[self.passed]

    def describe(self) -> str:
        head = f"[{self.verdict}] {self.name}: expected {self.expected}; got {self.actual}"
        if self.request_id:
            head += f" (request_id={self.request_id})"
        if self.passed is False and self.logs:
            head += "".join(
                f"\n    --- {name} ---\n" + "\n".join(f"    {ln}" for ln in text.splitlines())
                for name, text in self.logs.items()
                if text
            )
        return head
