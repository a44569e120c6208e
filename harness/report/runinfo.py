"""How a run was started and how it ended, for run.json: the command line, pytest's exit code, an interruption,
the harness's git commit, versions, start and end times, and why a run that selected no case selected none.

Pure functions and file reads only (the commit is read from ``.git`` itself, no ``git`` binary is needed), so
the report of a run is the same on a CI runner without git.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

SELECTION_FILE = "selection.json"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _git_dir(start: Path) -> Path | None:
    """The git directory of the work tree holding ``start`` (a ``.git`` file points into a linked worktree's)."""
    for d in [start, *start.parents]:
        dot = d / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file():
            text = dot.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                target = Path(text.removeprefix("gitdir:").strip())
                return target if target.is_absolute() else (d / target).resolve()
    return None


def git_commit(start: Path) -> str | None:
    """The commit checked out in the work tree holding ``start`` (None outside one, e.g. an installed wheel).
    Follows ``HEAD`` to a loose ref, then to ``packed-refs``, in the worktree's own and its common directory."""
    try:
        git_dir = _git_dir(start.resolve())
        if git_dir is None:
            return None
        head = (git_dir / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head or None
        ref = head.removeprefix("ref:").strip()
        common = git_dir
        if (git_dir / "commondir").is_file():
            common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
        for d in (git_dir, common):
            if (d / ref).is_file():
                return (d / ref).read_text().strip() or None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                sha, _, name = line.partition(" ")
                if name == ref:
                    return sha
    except OSError:
        return None
    return None


def versions() -> dict[str, str | None]:
    def version_of(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        # Not platform.platform(): it asks `uname -p` in a subprocess for the processor name.
        "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}",
        "mmharness": version_of("mmharness"),
        "pytest": version_of("pytest"),
        "pytest-xdist": version_of("pytest-xdist"),
        "pytest-timeout": version_of("pytest-timeout"),
    }


def start_info(argv: list[str], pytest_cmd: list[str], backend: str, source: Path) -> dict[str, Any]:
    """The part of run.json known before pytest starts."""
    return {
        "command": ["harness", *argv],
        "pytest_command": pytest_cmd,
        "backend": backend,
        "executable": sys.executable,
        "git_commit": git_commit(source),
        "versions": versions(),
        "started": utc_now(),
    }


def load_selection(run_dir: Path) -> dict[str, Any] | None:
    """What the plugin recorded about the selection (``selection.json``), if it got as far as collecting."""
    try:
        data = json.loads((run_dir / SELECTION_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def explain_no_selection(selection: dict[str, Any]) -> str:
    """One message for a run that selected no case: the directory, the expressions, and the marks that exist."""
    flags = (("-m", "markexpr"), ("-k", "keyword"))
    asked = [f"{flag} {selection[key]!r}" for flag, key in flags if selection.get(key)]
    return (
        f"no case selected: {selection.get('cases', 0)} --backend {selection.get('backend')} case(s) in "
        f"{selection.get('profile_dir')}, {' and '.join(asked) or 'the selection'} matched none; "
        f"marks that exist: {', '.join(selection.get('marks') or []) or '(none)'}"
    )
