"""The gate's scenario against scripted stacks: a correct one passes, and each broken one fails the check that
exists to catch it, so a check that cannot fail shows up here and not in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.gate import scenario
from harness.gate.scenario import Gate, GateResult
from harness.mm import image_tokens
from harness.profiles import RouterCapabilities
from tests.unit.gate_fakes import FakeStack, Knobs


def run(
    tmp_path: Path,
    knobs: Knobs | None = None,
    workers: int = 2,
    caps: RouterCapabilities | None = None,
    suite: str = "post_merge",
) -> GateResult:
    stack = FakeStack(tmp_path, knobs, workers)
    if caps is not None:
        stack.spec = stack.spec.__class__(**{**stack.spec.__dict__, "capabilities": caps})
    with stack.client() as client:
        return Gate(stack, stack.images, client, suite=suite).run()  # type: ignore[arg-type]


def failed(result: GateResult) -> set[str]:
    return {c.name for c in result.failures}


def verdict(result: GateResult, name: str) -> str:
    return next(c.verdict for c in result.checks if c.name == name)


def test_a_correct_stack_passes_every_check(tmp_path: Path) -> None:
    result = run(tmp_path)
    assert result.passed, result.report()
    assert not result.not_applicable, result.not_applicable
    assert set(result.required) <= {c.name for c in result.checks if c.passed}
    assert result.thresholds["image_tokens_512x512"] == {
        "value": 256,
        "source": "reference",
        "detail": "builtin:qwen3_vl",
    }
    assert result.thresholds["template_prefix"]["source"] == "probe"
    # The main prompt is padded to whole blocks so the repeat shows vLLM's last-token rule: P - 16 cached.
    repeat = next(r for r in result.replies if r.tag == "repeat")
    assert repeat.prompt_tokens % 16 == 0 and repeat.cached_tokens == repeat.prompt_tokens - 16


def test_pre_merge_suite_skips_the_post_merge_steps(tmp_path: Path) -> None:
    result = run(tmp_path, suite="pre_merge")
    assert result.passed, result.report()
    names = {c.name for c in result.checks}
    assert "staircase: each added image adds the same cached blocks" in names
    assert "same picture at another resolution: a miss" not in names
    assert {c.suite for c in result.checks} == {"pre_merge"}


def test_dropping_the_last_token_rule_fails_the_repeat(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(no_last_token_rule=True))
    assert "repeat hits the image blocks" in failed(result)


def test_sixteen_more_image_tokens_in_the_shared_core_fail_the_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault moves the stack *and* the oracle (both use harness.mm): only the published anchors catch it."""
    real = image_tokens.qwen_vl_tokens
    monkeypatch.setattr(image_tokens, "qwen_vl_tokens", lambda *a, **kw: real(*a, **kw) + 16)
    result = run(tmp_path)
    assert "reference image-token formula matches published counts" in failed(result)
    assert not result.passed


def test_workers_counting_other_image_tokens_fail_probe_and_render(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(worker_image_bonus=16))
    assert {
        "stack's image-token count (probe) matches the reference",
        "stack's render endpoint matches the reference",
    } <= failed(result)


def test_text_key_router_is_rejected_on_routing_for_claiming_other_images(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(router="text_key"))
    assert "routing" in result.failed_kinds()
    assert {
        "router does not claim the new image's blocks",
        "router's claimed overlap does not exceed the worker's cache",
        "different images spread under load",
    } <= failed(result)
    with pytest.raises(AssertionError):
        result.assert_verdict(control=True)


def test_first_image_only_router_claims_past_the_changed_second_image(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(router="first_image_only"))
    assert "router stops at the changed second image" in failed(result)


def test_round_robin_fails_colocation_and_the_exact_hits(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(router="round_robin"))
    assert {"repeat co-locates", "repeat hits the image blocks", "repeats stay on the cached worker under load"} <= (
        failed(result)
    )


def test_router_block_size_unlike_the_workers_fails_a_routing_check(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(router_block=32))
    assert {"router and workers agree on the block size", "MM-aware routing start-up line"} <= failed(result)
    assert verdict(result, "router and workers agree on the block size") == "FAIL"


def test_misreported_cached_tokens_fail_hits_and_metrics(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(misreport=16))
    assert {"/metrics prefix-cache hits match responses", "repeat hits the image blocks"} <= failed(result)


def test_no_served_by_header_falls_back_to_counter_deltas(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(send_served_by=False))
    assert result.passed, result.report()
    colocates = next(c for c in result.checks if c.name == "repeat co-locates")
    assert colocates.source == "metrics"
    burst = next(c for c in result.checks if c.name == "different images spread under load")
    assert burst.passed and burst.source == "metrics"


def test_no_attribution_at_all_is_insufficient_evidence_not_a_false_failure(tmp_path: Path) -> None:
    caps = RouterCapabilities(records="harness", startup_line=True, attribution=("header",))
    result = run(tmp_path, Knobs(send_served_by=False), caps=caps)
    assert verdict(result, "different images spread under load") == "n/a"  # never a failure on {None: 6}
    assert "insufficient evidence: different images spread under load" in failed(result)
    assert result.failed_kinds() == {"evidence"}
    with pytest.raises(scenario.GateBroken, match="not on routing"):
        result.assert_verdict(control=True)  # missing evidence never rejects a control


def test_a_router_declared_to_keep_records_without_them_fails(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(keep_records=False))
    assert {
        "router does not claim the new image's blocks",
        "router keys the whole prompt as the workers expand it",
    } <= (failed(result))


def test_no_render_endpoint_is_na_with_its_reason(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(render_endpoint=False))
    assert result.passed, result.report()
    na = {n["name"]: n["reason"] for n in result.not_applicable}
    assert na["stack's render endpoint matches the reference"] == "the worker has no render endpoint"


def test_declared_capabilities_of_a_mocker_engine(tmp_path: Path) -> None:
    """Dynamo's mockers: no text, no OpenAI API on the workers' URLs. Probes go through the front door, the
    content checks are n/a with that reason, and nothing fails for what the stack declared it cannot do."""
    caps = RouterCapabilities(records="harness", startup_line=True, engine_text=False, workers_serve_openai=False)
    result = run(tmp_path, Knobs(null_content=True, workers_metrics_only=True), caps=caps)
    assert result.passed, result.report()
    na = {n["name"]: n["reason"] for n in result.not_applicable}
    assert na["first: content names green"] == "the engine is declared to answer no text"
    assert "stack's render endpoint matches the reference" in na
    probe = next(c for c in result.checks if c.name == "stack's image-token count (probe) matches the reference")
    assert probe.passed is True  # measured through the front door


def test_an_engine_blind_to_images_makes_image_cache_checks_na(tmp_path: Path) -> None:
    caps = RouterCapabilities(records="harness", startup_line=True, engine_sees_images=False)
    result = run(tmp_path, caps=caps)
    na = {n["name"]: n["reason"] for n in result.not_applicable}
    assert "the engine ignores image content" in na["different image: no cached image blocks"]
    # The router's own account still judges images.
    assert verdict(result, "router does not claim the new image's blocks") == "pass"


FORGETS = "router forgets blocks the workers evicted"
CLAIMS = "router's claimed overlap does not exceed the worker's cache"


@pytest.fixture
def no_eviction_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenario, "EVICTION_WAITS_S", (0.0, 0.0, 0.0))


def check(result: GateResult, name: str) -> scenario.CheckResult:
    return next(c for c in result.checks if c.name == name)


def test_an_event_fed_router_forgets_what_the_workers_cleared(tmp_path: Path, no_eviction_waits: None) -> None:
    result = run(tmp_path, suite="pre_merge")
    assert result.passed, result.report()
    forgets = check(result, FORGETS)
    assert forgets.passed is True and FORGETS in result.required
    assert "overlap_blocks=0 " in forgets.actual and forgets.actual.endswith("(try 1 of 3)")
    evicted = next(r for r in result.replies if r.tag == "evicted1")
    assert evicted.cached_tokens == 0  # the clear really emptied the workers


def test_a_lagging_event_feed_is_tried_again_after_a_fresh_clear(tmp_path: Path, no_eviction_waits: None) -> None:
    result = run(tmp_path, Knobs(event_lag=1), suite="pre_merge")
    assert result.passed, result.report()
    assert check(result, FORGETS).actual.endswith("(try 2 of 3)")


def test_a_router_that_never_forgets_is_rejected_on_routing(tmp_path: Path, no_eviction_waits: None) -> None:
    result = run(tmp_path, Knobs(never_forgets=True), suite="pre_merge")
    forgets = check(result, FORGETS)
    assert forgets.passed is False and forgets.kind == "routing"
    assert forgets.actual.endswith("(try 3 of 3)") and "cached_tokens=0 " in forgets.actual
    assert CLAIMS in failed(result)  # the claims-versus-cache check over every request agrees
    with pytest.raises(AssertionError):
        result.assert_verdict(control=True)


def test_a_router_that_only_predicts_is_not_expected_to_see_evictions(tmp_path: Path) -> None:
    caps = RouterCapabilities(records="harness", startup_line=True)  # kv_events=False
    result = run(tmp_path, Knobs(never_forgets=True), caps=caps, suite="pre_merge")
    assert result.passed, result.report()
    na = {n["name"]: n["reason"] for n in result.not_applicable}
    assert "no KV events" in na[FORGETS]
    assert FORGETS not in result.required
    assert not any(r.tag.startswith("evicted") for r in result.replies)  # nothing was cleared


def test_an_event_fed_router_whose_workers_cannot_clear_is_insufficient_evidence(
    tmp_path: Path, no_eviction_waits: None
) -> None:
    result = run(tmp_path, Knobs(reset_endpoint=False), suite="pre_merge")
    assert "VLLM_SERVER_DEV_MODE=1" in next(n["reason"] for n in result.not_applicable if n["name"] == FORGETS)
    assert f"insufficient evidence: {FORGETS}" in failed(result)
    assert result.failed_kinds() == {"evidence"}


# -- an engine blind to images (Dynamo's mocker): the verdict rests on the router's records ------------------------
REPEAT_CLAIMS = "router claims the repeat's blocks on the first's worker"
TRANSPORT_CLAIMS = "router claims the same image sent by the other transport"
BURST_CLAIMS = "router claims the concurrent repeats' blocks on the first's worker"
REF_COVERS = "router keys the whole prompt as the reference expands it"
COVERS = "router keys the whole prompt as the workers expand it"
BLOCK = "router and workers agree on the block size"
STARTUP = "MM-aware routing start-up line"
METRICS = "/metrics prefix-cache hits match responses"
PROBE = "stack's image-token count (probe) matches the reference"
MOCKER_CAPS = RouterCapabilities(
    records="dynamo", startup_line=True, engine_sees_images=False, worker_metrics=False
)


def mocker(**kw: object) -> Knobs:
    """A Dynamo-like stack: image-blind engine, Dynamo's record format, a start-up line naming the model
    directory without a block size, no vllm:* metrics on the workers."""
    base: dict[str, object] = dict(
        blind_engine=True,
        dynamo_records=True,
        startup_model="/state/dynamo/model",
        startup_block=False,
        served_path="/state/dynamo/model",
        vllm_metrics=False,
    )
    return Knobs(**{**base, **kw})  # type: ignore[arg-type]


def test_an_image_blind_engine_is_judged_by_the_routers_records(tmp_path: Path) -> None:
    result = run(tmp_path, mocker(), caps=MOCKER_CAPS, suite="pre_merge")
    assert result.passed, result.report()
    na = {n["name"]: n["reason"] for n in result.not_applicable}
    # The checks comparing the router's image expansion or claims with the engine's numbers: n/a, not required.
    for name in (COVERS, CLAIMS, PROBE, "repeat hits the image blocks", "same image by base64 hits"):
        assert "the engine ignores image content" in na[name], name
        assert name not in result.required
    assert "worker_metrics=False" in na[METRICS] and METRICS not in result.required
    # What the records prove, against the reference expansion (engine text + 256 tokens per image).
    for name in (REF_COVERS, REPEAT_CLAIMS, TRANSPORT_CLAIMS, BURST_CLAIMS, BLOCK, STARTUP):
        assert check(result, name).passed is True and name in result.required, name
    block = check(result, BLOCK)
    assert block.source and "records" in block.source and "block-probe" in block.actual  # sent through the router
    assert "block_size not stated" in check(result, STARTUP).actual
    home = check(result, "repeats stay on the cached worker under load")
    assert "placement only" in home.expected
    # 5 text + 256 image + ... tokens: the repeat's floor is every block but the last token's.
    repeat = next(r for r in result.replies if r.tag == "repeat")
    assert repeat.prompt_tokens < 100  # the engine's own count holds one placeholder per image
    floor = result.thresholds["repeat_claimed_blocks_at_least"]["value"]
    assert floor == (repeat.prompt_tokens + 255 - 1) // 16


def test_a_router_hashing_the_url_string_fails_the_transport_claim(tmp_path: Path) -> None:
    result = run(tmp_path, mocker(url_hash=True), caps=MOCKER_CAPS, suite="pre_merge")
    assert check(result, REPEAT_CLAIMS).passed is True
    transport = check(result, TRANSPORT_CLAIMS)
    assert transport.passed is False and "overlap_blocks=0 " in transport.actual
    with pytest.raises(AssertionError):
        result.assert_verdict(control=True)


def test_a_router_whose_index_never_matches_fails_the_repeat_claims(tmp_path: Path) -> None:
    """Dynamo with KV events: 0/N even for exact repeats, and they scatter."""
    result = run(tmp_path, mocker(router="no_match"), caps=MOCKER_CAPS, suite="pre_merge")
    assert {REPEAT_CLAIMS, TRANSPORT_CLAIMS, BURST_CLAIMS} <= failed(result)
    assert "overlap_blocks [0, 0, 0, 0, 0, 0]" in check(result, BURST_CLAIMS).actual
    assert check(result, "router does not claim the new image's blocks").passed is True
    with pytest.raises(AssertionError):
        result.assert_verdict(control=True)


def test_a_router_expanding_images_unlike_the_model_fails_the_reference_cover(tmp_path: Path) -> None:
    result = run(tmp_path, mocker(router_image_bonus=32), caps=MOCKER_CAPS, suite="pre_merge")
    assert REF_COVERS in failed(result)
    assert verdict(result, COVERS) == "n/a"  # never judged against the blind engine's prompt_tokens
    assert check(result, REPEAT_CLAIMS).passed is True  # its own claims are consistent


def test_without_a_stated_block_size_the_records_judge_it(tmp_path: Path) -> None:
    result = run(tmp_path, mocker(router_block=32), caps=MOCKER_CAPS, suite="pre_merge")
    block = check(result, BLOCK)
    assert block.passed is False and block.kind == "routing" and "records" in (block.source or "")


def test_a_start_up_line_naming_an_unserved_directory_fails(tmp_path: Path) -> None:
    result = run(tmp_path, mocker(served_path=None), caps=MOCKER_CAPS, suite="pre_merge")
    startup = check(result, STARTUP)
    assert startup.passed is False and "model=/state/dynamo/model (not" in startup.actual


def test_an_engine_ignoring_cache_salt_is_named_as_the_culprit(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(salt_blind_engine=True), suite="pre_merge")
    salt = check(result, "other cache_salt shares nothing")
    assert salt.passed is False
    assert "the engine's cache, not the router, shares blocks across cache_salt values" in salt.actual
    assert check(result, "router keeps cache_salt apart").passed is True


def test_workers_without_vllm_metrics_fail_unless_declared(tmp_path: Path) -> None:
    result = run(tmp_path, Knobs(vllm_metrics=False), suite="pre_merge")
    assert verdict(result, METRICS) == "n/a"
    assert f"insufficient evidence: {METRICS}" in failed(result)  # required: worker_metrics is not declared off
    declared = RouterCapabilities(records="harness", startup_line=True, kv_events=True, worker_metrics=False)
    result = run(tmp_path, Knobs(vllm_metrics=False), caps=declared, suite="pre_merge")
    assert result.passed, result.report()
