"""URL mode's synthetic case: capabilities and topology from command-line values, each bad value named."""

from __future__ import annotations

import pytest

from harness import contract as c
from harness.stack.attach import AttachError, AttachSpec, parse_attribution, short_name, spec_from_options, url_case
from harness.stack.spec import resolve_spec


def test_url_case_carries_the_declared_capabilities_and_workers() -> None:
    spec = spec_from_options(
        "http://127.0.0.1:8000/",
        ["http://127.0.0.1:8001", "http://127.0.0.1:8002"],
        "Qwen/Qwen3-VL-2B-Instruct",
        ["records=dynamo", "attribution=nvext", "startup_line=yes", "engine_sees_images=no", "block_size=32",
         "router_log=/tmp/router.log", "expect=fail", "engine_text=no", "workers_serve_openai=no"],
    )
    case = url_case(spec)
    assert case.id == "mm_url_qwen3-vl-2b-instruct"
    assert case.is_control
    stack = resolve_spec(case)
    assert (stack.router, stack.script, stack.workers, stack.block_size) == ("url", "url.sh", 2, 32)
    caps = stack.capabilities
    assert (caps.records, caps.attribution, caps.startup_line, caps.engine_sees_images) == (
        "dynamo", ("nvext",), True, False)
    assert (caps.engine_text, caps.workers_serve_openai) == (False, False)
    assert stack.env[c.ENV_URL] == "http://127.0.0.1:8000"
    assert stack.env[c.ENV_URL_WORKERS] == "http://127.0.0.1:8001 http://127.0.0.1:8002"
    assert stack.env[c.ENV_URL_ROUTER_LOG] == "/tmp/router.log"


def test_defaults_keep_no_records_and_header_then_metrics() -> None:
    case = url_case(AttachSpec("http://127.0.0.1:8000", model="m"))
    caps = case.effective.router_capabilities
    assert (caps.records, caps.attribution, caps.served_by_header, case.effective.workers) == (
        None, ("header", "metrics"), "X-Served-By", 1)


@pytest.mark.parametrize(
    ("pairs", "flag"),
    [
        (["records=xml"], "--records"),
        (["attribution=telepathy"], "--attribution"),
        (["block_size=x"], "--block-size"),
        (["block_size=0"], "--block-size"),
        (["payload=video"], "--payload"),
        (["expect=maybe"], "--expect"),
        (["startup_line=perhaps"], "--startup-line"),
        (["workers=3"], "--workers"),  # two --worker-url given
        (["colour=green"], "unknown key"),
        (["records"], "KEY=VALUE"),
    ],
)
def test_bad_values_name_their_flag(pairs: list[str], flag: str) -> None:
    with pytest.raises(AttachError, match=flag):
        url_case(spec_from_options("http://127.0.0.1:1", ["http://a:1", "http://b:2"], "m", pairs))


def test_urls_must_be_http() -> None:
    with pytest.raises(AttachError, match="--url"):
        url_case(AttachSpec("127.0.0.1:8000", model="m"))
    with pytest.raises(AttachError, match="--worker-url"):
        url_case(AttachSpec("http://127.0.0.1:8000", worker_urls=("ftp://x",), model="m"))


def test_attribution_order_and_header_name() -> None:
    assert parse_attribution(["header:X-Worker,metrics", "nvext"]) == (("header", "metrics", "nvext"), "X-Worker")
    with pytest.raises(AttachError):
        parse_attribution([""])
    assert short_name("llava-hf/llava-1.5-7b-hf") == "llava-1.5-7b-hf"


def test_workers_line_round_trip() -> None:
    text = "noise\n" + c.format_workers(["http://127.0.0.1:1", "http://127.0.0.1:2"]) + "\nHARNESS_READY url=x\n"
    assert c.parse_workers(text) == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    assert c.parse_workers("HARNESS_READY url=x") is None
    assert c.parse_workers("say HARNESS_WORKERS urls=http://x") is None  # only at a line start


def test_worker_metrics_is_declared_on_the_command_line() -> None:
    pairs = ["records=dynamo", "worker_metrics=no"]
    caps = resolve_spec(url_case(spec_from_options("http://127.0.0.1:8000", [], "m", pairs))).capabilities
    assert caps.worker_metrics is False
    assert resolve_spec(url_case(AttachSpec("http://127.0.0.1:8000", model="m"))).capabilities.worker_metrics
    with pytest.raises(AttachError, match="--worker-metrics"):
        spec_from_options("http://127.0.0.1:8000", [], "m", ["worker_metrics=maybe"])
