"""Profiles: case ids, mark order, overrides, validation, VRAM deselection and loading profile directories."""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.profiles import (
    Case,
    ModelProfile,
    RouterCapabilities,
    Topology,
    default_launch_dir,
    default_profile_dir,
    find_case,
    load_profiles,
    vram_deselect_reason,
)
from harness.pytest_plugin import case_marks, case_params
from harness.stack.launch import case_env
from harness.stack.spec import resolve_spec

MODEL = ModelProfile("org/Some-VL-2B", "some-vl-2b", family="qwen3_vl", marks=("model_mark",))
BIG_MODEL = ModelProfile("org/Big-VL-7B", "big-vl-7b", gpus=2, marks=("big",))
GATE = Topology(
    "agg_router",
    "agg_router.sh",
    marks=("pre_merge",),
    workers=2,
    router="proxy",
    policy="kv_mm",
    profiled_vram_gib=16.0,
)
CONTROL = Topology(
    "agg_router_kv_text",
    "agg_router.sh",
    marks=("pre_merge",),
    workers=2,
    router="proxy",
    policy="kv_text",
    profiled_vram_gib=16.0,
    expect="fail",
)
VLLM = Topology("agg", "agg.sh", backend="vllm", marks=("post_merge", "nightly"), profiled_vram_gib=7.5)

# Model and case marks here are made up, so pytest does not know them.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnknownMarkWarning")


def mark_list(case: Case) -> list[tuple[str, dict[str, Any]]]:
    return [(m.mark.name, dict(m.mark.kwargs)) for m in case_marks(case)]


# --- ids -------------------------------------------------------------------------------------------------------


def test_id_is_topology_then_model_short() -> None:
    assert Case(MODEL, GATE).id == "mm_agg_router_some-vl-2b"


def test_id_with_suffix() -> None:
    assert Case(MODEL, GATE, payload="base64", suffix="b64").id == "mm_agg_router_some-vl-2b_b64"


def test_id_ignores_overrides_and_payload() -> None:
    case = Case(MODEL, GATE, payload="multi_image", overrides={"workers": 4})
    assert case.id == "mm_agg_router_some-vl-2b"


# --- marks -----------------------------------------------------------------------------------------------------


def test_sim_gate_mark_order_and_no_gpu_mark() -> None:
    case = Case(MODEL, GATE, marks=("case_mark",))
    assert case.mark_names == ["sim", "pre_merge", "model_mark", "case_mark"]
    assert [name for name, _ in mark_list(case)] == ["sim", "pre_merge", "model_mark", "case_mark"]
    assert not any(n.startswith("gpu_") for n in case.mark_names)
    assert "xfail" not in case.mark_names


def test_vllm_mark_order_puts_gpu_after_model_marks_and_before_case_marks() -> None:
    case = Case(BIG_MODEL, VLLM, marks=("case_mark",))
    assert case.mark_names == ["vllm", "post_merge", "nightly", "big", "gpu_2", "case_mark"]


def test_control_ends_with_strict_xfail() -> None:
    case = Case(MODEL, CONTROL, marks=("case_mark",))
    assert case.is_control
    marks = mark_list(case)
    assert [name for name, _ in marks] == ["sim", "pre_merge", "model_mark", "case_mark", "xfail"]
    _, kwargs = marks[-1]
    assert kwargs.get("strict") is True
    assert kwargs.get("raises") is AssertionError  # only the gate's verdict rejects; errors stay errors
    assert kwargs.get("reason")


def test_gate_is_not_control_and_has_no_xfail() -> None:
    case = Case(MODEL, GATE)
    assert not case.is_control
    assert all(name != "xfail" for name, _ in mark_list(case))


def test_duplicate_marks_keep_first_position() -> None:
    case = Case(MODEL, GATE, marks=("pre_merge", "sim", "extra"))
    assert case.mark_names == ["sim", "pre_merge", "model_mark", "extra"]


def test_pytest_params_carry_id_value_and_marks() -> None:
    gate, control = Case(MODEL, GATE), Case(MODEL, CONTROL)
    params = case_params([gate, control])
    assert [p.id for p in params] == [gate.id, control.id]
    assert [p.values for p in params] == [(gate,), (control,)]
    assert [m.name for m in params[0].marks] == ["sim", "pre_merge", "model_mark"]
    assert [m.name for m in params[1].marks] == ["sim", "pre_merge", "model_mark", "xfail"]
    assert params[1].marks[-1].kwargs["strict"] is True


def test_pytest_params_rejects_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="duplicate case id mm_agg_router_some-vl-2b"):
        case_params([Case(MODEL, GATE), Case(MODEL, GATE, payload="base64")])


def test_pytest_params_accepts_same_topology_with_distinct_suffixes() -> None:
    params = case_params([Case(MODEL, GATE), Case(MODEL, GATE, payload="base64", suffix="b64")])
    assert len(params) == 2


# --- overrides -------------------------------------------------------------------------------------------------


def test_no_overrides_effective_is_topology() -> None:
    assert Case(MODEL, GATE).effective == GATE


def test_override_workers_and_vram() -> None:
    case = Case(MODEL, GATE, overrides={"workers": 4, "profiled_vram_gib": 19.0})
    assert case.effective.workers == 4
    assert case.effective.profiled_vram_gib == 19.0
    assert case.effective.policy == "kv_mm"  # untouched fields come from the topology
    assert GATE.workers == 2  # the shared topology is not mutated


def test_override_marks_replace_topology_marks() -> None:
    case = Case(MODEL, GATE, overrides={"marks": ("post_merge",)})
    assert case.mark_names == ["sim", "post_merge", "model_mark"]
    assert "pre_merge" not in case.mark_names


def test_override_expect_turns_gate_into_control_and_back() -> None:
    control = Case(MODEL, GATE, overrides={"expect": "fail"})
    assert control.is_control
    assert mark_list(control)[-1][0] == "xfail"
    gate = Case(MODEL, CONTROL, overrides={"expect": "pass"})
    assert not gate.is_control
    assert all(name != "xfail" for name, _ in mark_list(gate))


def test_override_backend_adds_gpu_mark() -> None:
    case = Case(MODEL, GATE, overrides={"backend": "vllm"})
    assert case.mark_names == ["vllm", "pre_merge", "model_mark", "gpu_1"]


def test_unknown_override_keys_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="unknown override") as exc:
        Case(MODEL, GATE, overrides={"worker": 3, "vram": 1.0, "timeout_s": 5})
    message = str(exc.value)
    assert "'vram'" in message and "'worker'" in message
    assert "timeout_s" not in message


# --- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"backend": "tpu"}, "backend"),
        ({"router": "nginx"}, "router"),
        ({"expect": "maybe"}, "expect"),
        ({"router": "proxy", "workers": 0}, "at least 1"),
    ],
)
def test_invalid_topology_rejected(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Topology("bad", "agg.sh", **kwargs)


def test_invalid_payload_rejected() -> None:
    with pytest.raises(ValueError, match="payload"):
        Case(MODEL, GATE, payload="video")


@pytest.mark.parametrize(("key", "value"), [("backend", "tpu"), ("router", "nginx"), ("expect", "fails")])
def test_invalid_override_value_rejected(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        _ = Case(MODEL, GATE, overrides={key: value}).effective


def test_valid_values_accepted() -> None:
    for backend in ("sim", "vllm"):
        for router in ("proxy", "vllm-router", "sglang-router", "none"):
            t = Topology("ok", "agg.sh", backend=backend, router=router, workers=1)
            assert (t.backend, t.router) == (backend, router)
    for payload in ("image_url", "base64", "multi_image", "multi_turn", "lora"):
        assert Case(MODEL, GATE, payload=payload).payload == payload


# --- VRAM budget -----------------------------------------------------------------------------------------------


def test_vram_no_budget_keeps_everything() -> None:
    unknown = Case(MODEL, GATE, overrides={"profiled_vram_gib": None})
    assert vram_deselect_reason(unknown, None) is None
    assert vram_deselect_reason(Case(MODEL, GATE), None) is None


def test_vram_above_budget_deselected() -> None:
    case = Case(MODEL, GATE)  # 16 GiB
    reason = vram_deselect_reason(case, 15.9)
    assert reason is not None
    assert case.id in reason and "16.0" in reason and "15.9" in reason


def test_vram_at_or_below_budget_kept() -> None:
    case = Case(MODEL, GATE)
    assert vram_deselect_reason(case, 16.0) is None
    assert vram_deselect_reason(case, 80.0) is None


def test_vram_unknown_is_unsafe_under_budget() -> None:
    case = Case(MODEL, Topology("agg", "agg.sh"))
    assert case.effective.profiled_vram_gib is None
    reason = vram_deselect_reason(case, 1000.0)
    assert reason is not None and case.id in reason and "profiled_vram_gib" in reason


def test_vram_uses_override() -> None:
    case = Case(MODEL, GATE, overrides={"profiled_vram_gib": 40.0})
    assert vram_deselect_reason(case, 16.0) is not None
    small = Case(MODEL, GATE, overrides={"profiled_vram_gib": 4.0})
    assert vram_deselect_reason(small, 8.0) is None
    unknown = Case(MODEL, GATE, overrides={"profiled_vram_gib": None})
    assert vram_deselect_reason(unknown, 8.0) is not None


# --- the repository's profiles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_cases() -> list[Case]:
    return load_profiles(default_profile_dir())


@pytest.mark.parametrize("backend", ["sim", "vllm"])
def test_repo_ids_unique_per_backend(repo_cases: list[Case], backend: str) -> None:
    cases = [c for c in repo_cases if c.effective.backend == backend]
    assert cases, f"no {backend} cases"
    dupes = [i for i, n in Counter(c.id for c in cases).items() if n > 1]
    assert dupes == []
    assert len(case_params(cases)) == len(cases)


def test_repo_backend_filter_partitions(repo_cases: list[Case]) -> None:
    sim = load_profiles(default_profile_dir(), backend="sim")
    vllm = load_profiles(default_profile_dir(), backend="vllm")
    assert {c.effective.backend for c in sim} == {"sim"}
    assert {c.effective.backend for c in vllm} == {"vllm"}
    assert len(sim) + len(vllm) == len(repo_cases)


def test_repo_sim_pre_merge_has_gate_and_control() -> None:
    sim = load_profiles(default_profile_dir(), backend="sim")
    pre = [c for c in sim if "pre_merge" in c.mark_names]
    controls = [c for c in pre if c.is_control]
    gates = [c for c in pre if not c.is_control and c.effective.router != "none"]
    assert controls, "no pre_merge control: nothing proves the gate has teeth"
    assert gates, "no passing pre_merge router case"
    for c in controls:
        assert c.effective.expect == "fail"
        xfail = case_marks(c)[-1].mark
        assert xfail.name == "xfail" and xfail.kwargs["strict"] is True


def test_repo_cases_reference_existing_launch_scripts(repo_cases: list[Case]) -> None:
    launch = default_launch_dir()
    missing = sorted({c.effective.script for c in repo_cases if not (launch / c.effective.script).is_file()})
    assert missing == []


# --- loading directories ---------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_load_profile_without_cases_raises(tmp_path: Path) -> None:
    write(tmp_path / "empty.py", "X = 1\n")
    with pytest.raises(ValueError, match=r"empty\.py.*CASES"):
        load_profiles(tmp_path)


def test_load_profile_with_non_list_cases_raises(tmp_path: Path) -> None:
    write(tmp_path / "bad.py", "CASES = None\n")
    with pytest.raises(ValueError, match="CASES"):
        load_profiles(tmp_path)


def test_underscore_files_skipped_but_importable(tmp_path: Path) -> None:
    # _shared.py would raise if it were loaded as a profile file (no CASES).
    write(
        tmp_path / "_shared.py",
        """
        from harness.profiles import ModelProfile, Topology
        M = ModelProfile("org/shared", "shared")
        T = Topology("tt", "agg.sh", profiled_vram_gib=1.0)
        """,
    )
    write(
        tmp_path / "b_second.py",
        """
        from _shared import M, T
        from harness.profiles import Case
        CASES = [Case(M, T, suffix="b")]
        """,
    )
    write(
        tmp_path / "a_first.py",
        """
        from _shared import M, T
        from harness.profiles import Case
        CASES = [Case(M, T, suffix="a")]
        """,
    )
    cases = load_profiles(tmp_path)
    assert [c.id for c in cases] == ["mm_tt_shared_a", "mm_tt_shared_b"]  # files in sorted order
    assert cases[0].model is cases[1].model  # one shared module per load


def test_siblings_come_from_the_loaded_directory(tmp_path: Path) -> None:
    """A sibling named like one of another profile dir (``_models``) must not be served from the module cache."""
    load_profiles(default_profile_dir())  # the repo's profiles use their own _models.py
    write(
        tmp_path / "_models.py",
        """
        from harness.profiles import ModelProfile
        MINE = ModelProfile("org/mine", "mine")
        """,
    )
    write(
        tmp_path / "p.py",
        """
        from _models import MINE
        from harness.profiles import Case, Topology
        CASES = [Case(MINE, Topology("t", "agg.sh"))]
        """,
    )
    assert [c.id for c in load_profiles(tmp_path)] == ["mm_t_mine"]
    # and the repo's profiles still load afterwards
    assert any(c.model.short == "qwen3-vl-2b" for c in load_profiles(default_profile_dir()))


def test_load_profiles_backend_filter_uses_effective_backend(tmp_path: Path) -> None:
    write(
        tmp_path / "p.py",
        """
        from harness.profiles import Case, ModelProfile, Topology
        M = ModelProfile("org/m", "m")
        T = Topology("t", "agg.sh")
        CASES = [Case(M, T), Case(M, T, suffix="gpu", overrides={"backend": "vllm"})]
        """,
    )
    assert [c.id for c in load_profiles(tmp_path, backend="vllm")] == ["mm_t_m_gpu"]
    assert [c.id for c in load_profiles(tmp_path, backend="sim")] == ["mm_t_m"]


# --- find_case -------------------------------------------------------------------------------------------------


def test_find_case_found() -> None:
    cases = [Case(MODEL, GATE), Case(MODEL, CONTROL)]
    assert find_case(cases, "mm_agg_router_kv_text_some-vl-2b") is cases[1]


def test_find_case_missing_names_id_and_similar() -> None:
    cases = [Case(MODEL, GATE), Case(MODEL, CONTROL), Case(BIG_MODEL, VLLM)]
    with pytest.raises(KeyError) as exc:
        find_case(cases, "mm_nope_some-vl-2b")
    message = exc.value.args[0]
    assert "'mm_nope_some-vl-2b'" in message
    assert "similar: mm_agg_router_kv_text_some-vl-2b, mm_agg_router_some-vl-2b" in message
    assert "mm_agg_big-vl-7b" not in message
    assert "harness plan" in message


def test_find_case_missing_without_similar() -> None:
    with pytest.raises(KeyError) as exc:
        find_case([Case(MODEL, GATE)], "mm_x_unrelated")
    message = exc.value.args[0]
    assert "'mm_x_unrelated'" in message and "similar" not in message


def test_any_router_name_with_declared_capabilities() -> None:
    from harness.profiles import RouterCapabilities

    caps = RouterCapabilities(records="dynamo", attribution=("nvext",), engine_sees_images=False)
    t = Topology("dyn", "dynamo.sh", workers=2, router="dynamo-kv", capabilities=caps)
    assert t.router_capabilities is caps
    assert Topology("p", "agg_router.sh", router="proxy").router_capabilities.records == "harness"
    assert Topology("v", "agg_router.sh", router="vllm-router").router_capabilities.records is None


def test_kv_events_topology_declares_an_event_fed_proxy_and_asks_the_script_for_events(tmp_path: Path) -> None:
    fed = Case(MODEL, replace(GATE, kv_events=True))
    assert fed.effective.router_capabilities.kv_events is True
    env = case_env(resolve_spec(fed), [1, 2, 3, 4], tmp_path, "p.", {})
    assert env["HARNESS_KV_EVENTS"] == "1"
    plain = Case(MODEL, GATE)
    assert plain.effective.router_capabilities.kv_events is False
    assert "HARNESS_KV_EVENTS" not in case_env(resolve_spec(plain), [1, 2, 3, 4], tmp_path, "p.", {})
    # A declared router says for itself whether it hears events; vllm-router consumes none.
    declared = replace(GATE, kv_events=True, capabilities=RouterCapabilities(records="harness"))
    assert declared.router_capabilities.kv_events is False
    assert replace(GATE, kv_events=True, router="vllm-router").router_capabilities.kv_events is False
