"""The ``--degrade NAME[,NAME]`` flag shared by the TEST-ONLY degradations of the proxy (``harness.proxy.degrade``)
and of the simulated engine (``harness.sim.degrade``): one parser, each side with its own list of modes."""

from __future__ import annotations

from collections.abc import Iterable


def parse_modes(text: str | Iterable[str] | None, known: Iterable[str]) -> frozenset[str]:
    """``--degrade`` values (comma-separated, repeatable) -> mode names; a name outside ``known`` is a usage error
    (the CLI turns the ValueError into a message naming the flag)."""
    if text is None:
        return frozenset()
    items = [text] if isinstance(text, str) else list(text)
    names = {n.strip() for item in items for n in item.split(",") if n.strip()}
    allowed = tuple(known)
    unknown = names - set(allowed)
    if unknown:
        raise ValueError(f"unknown --degrade mode(s) {sorted(unknown)}; known: {', '.join(allowed)}")
    return frozenset(names)
