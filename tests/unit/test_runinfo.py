"""run.json's run facts: the commit read from .git itself (loose ref, packed ref, detached HEAD, linked worktree,
none), versions and times, and the explanation of a run that selected no case."""

from __future__ import annotations

from pathlib import Path

from harness.report.runinfo import explain_no_selection, git_commit, load_selection, start_info

SHA = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def repo(tmp_path: Path, head: str) -> Path:
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(head + "\n")
    (tmp_path / "repo" / "pkg" / "sub").mkdir(parents=True)
    return git


def test_commit_from_a_loose_ref_found_from_a_subdirectory(tmp_path: Path) -> None:
    git = repo(tmp_path, "ref: refs/heads/main")
    (git / "refs" / "heads" / "main").write_text(SHA + "\n")
    assert git_commit(tmp_path / "repo" / "pkg" / "sub") == SHA


def test_commit_from_packed_refs(tmp_path: Path) -> None:
    git = repo(tmp_path, "ref: refs/heads/main")
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{OTHER} refs/heads/other\n{SHA} refs/heads/main\n")
    assert git_commit(tmp_path / "repo" / "pkg") == SHA


def test_detached_head(tmp_path: Path) -> None:
    repo(tmp_path, SHA)
    assert git_commit(tmp_path / "repo") == SHA


def test_linked_worktree_reads_its_own_head_and_the_common_refs(tmp_path: Path) -> None:
    git = repo(tmp_path, "ref: refs/heads/main")
    (git / "refs" / "heads" / "feature").write_text(OTHER + "\n")
    wt_git = git / "worktrees" / "wt"
    wt_git.mkdir(parents=True)
    (wt_git / "HEAD").write_text("ref: refs/heads/feature\n")
    (wt_git / "commondir").write_text("../..\n")
    (tmp_path / "wt").mkdir()
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {wt_git}\n")
    assert git_commit(tmp_path / "wt") == OTHER


def test_no_repository_or_unknown_ref(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    # tmp_path may itself sit inside some checkout; a repository with a ref that does not exist says None.
    repo(tmp_path, "ref: refs/heads/gone")
    assert git_commit(tmp_path / "repo") is None


def test_start_info(tmp_path: Path) -> None:
    info = start_info(["run", "-m", "pre_merge"], ["python", "-m", "pytest"], "sim", tmp_path)
    assert info["command"] == ["harness", "run", "-m", "pre_merge"]
    assert info["pytest_command"] == ["python", "-m", "pytest"] and info["backend"] == "sim"
    assert info["versions"]["python"] and info["versions"]["pytest"]
    assert info["started"].endswith("+00:00")


def test_no_selection_names_directory_expressions_and_marks(tmp_path: Path) -> None:
    selection = {"profile_dir": "/p", "backend": "sim", "cases": 3, "marks": ["pre_merge", "sim"], "selected": 0,
                 "markexpr": "pre_mrege", "keyword": "agg"}  # fmt: skip
    assert explain_no_selection(selection) == (
        "no case selected: 3 --backend sim case(s) in /p, -m 'pre_mrege' and -k 'agg' matched none; "
        "marks that exist: pre_merge, sim"
    )
    assert load_selection(tmp_path) is None
    (tmp_path / "selection.json").write_text("{half")
    assert load_selection(tmp_path) is None  # a torn file is no selection, not a crash
