"""Run directories: claimed atomically (concurrent runs never share or fail to get one) and ``latest`` replaced
atomically (never missing, never half made), moved only when asked."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from harness.cli import link_latest, new_run_dir


def test_concurrent_run_dirs_are_distinct_and_none_fails(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    made: list[Path] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(25):
            try:
                made.append(new_run_dir(root))
            except BaseException as exc:  # every failure counts, whatever it is
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(made) == 200 and len(set(made)) == 200
    assert all(p.is_dir() and p.parent == root for p in made)
    latest = root / "latest"
    assert latest.is_symlink() and (root / os.readlink(latest)) in made
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no temporary links left


def test_latest_moves_only_when_asked(tmp_path: Path) -> None:
    first = new_run_dir(tmp_path)
    assert os.readlink(tmp_path / "latest") == first.name
    second = new_run_dir(tmp_path, latest=False)
    assert second != first and second.is_dir()
    assert os.readlink(tmp_path / "latest") == first.name
    link_latest(second)
    assert os.readlink(tmp_path / "latest") == second.name
    assert (tmp_path / "latest").resolve() == second.resolve()


def test_latest_replaces_a_stale_link_or_a_dangling_one(tmp_path: Path) -> None:
    (tmp_path / "latest").symlink_to("gone")  # a removed run
    run = new_run_dir(tmp_path)
    assert os.readlink(tmp_path / "latest") == run.name
