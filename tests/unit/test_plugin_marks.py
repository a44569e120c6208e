"""Marks a profile invents are registered by the plugin: ``--strict-markers`` collects them and no
``PytestUnknownMarkWarning`` is raised, for a user's profile directory as for the built-in profiles."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

PROFILE = """\
from harness.profiles import Case, ModelProfile, Topology

M = ModelProfile("org/m-vl", "m", marks=("team_vision",))
T = Topology("gate", "fake.sh", marks=("pre_merge", "my_router_nightly"))
CASES = [Case(M, T, marks=("flaky_hw",))]
"""
TESTS = """\
def test_case(harness_case):
    assert harness_case.id == "mm_gate_m"
"""


def test_profile_marks_are_registered(pytester: pytest.Pytester) -> None:
    profiles = pytester.mkdir("profiles")
    (profiles / "cases.py").write_text(PROFILE)
    pytester.makepyfile(test_cases=TESTS)
    args = ["-p", "no:cacheprovider", f"--harness-profile-dir={profiles}", "--strict-markers",
            "-W", "error::pytest.PytestUnknownMarkWarning"]
    result = pytester.runpytest(*args, "-m", "my_router_nightly and team_vision and flaky_hw")
    result.assert_outcomes(passed=1)
    listed = pytester.runpytest(*args, "--markers").stdout.str()
    assert "@pytest.mark.my_router_nightly: declared by a harness profile" in listed


def test_builtin_profile_marks_are_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_cases="def test_x(harness_case):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers", "-W",
                                "error::pytest.PytestUnknownMarkWarning", "--collect-only", "-q", "-m", "dynamo")
    assert result.ret == 0, result.stdout.str()
    assert "mm_dynamo_kv_approx_qwen3-vl-2b" in result.stdout.str()
