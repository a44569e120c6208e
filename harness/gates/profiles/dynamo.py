"""NVIDIA Dynamo 1.6.1: its frontend's KV router in front of two mocker engines, in both KV-event modes.

``launch/dynamo.sh`` starts it on loopback from its own environment (``make dynamo`` builds ``.venv-dynamo``;
``HARNESS_DYNAMO_PYTHON`` points elsewhere). What the gate can observe of it, declared below, not guessed:

- records: its frontend logs ``[ROUTING] Best: worker_<id> ... with <x>/<m> blocks overlap ...
  x_request_id="<client id>"`` at DEBUG (the script turns that target on);
- start-up line: ``MM-aware KV routing enabled model=<model dir> model_dir=...`` at INFO (no block size in it);
- attribution: no ``X-Served-By``; the worker comes back in ``nvext.worker_id`` when the request asks for it;
- the mocker does not look at pixels (its prompt has one placeholder per image), so its ``cached_tokens`` say
  nothing about images: the verdict rests on the router's records and on placement;
- the mocker answers random token ids (``lib/mocker/src/common/sequence.rs``: ``random::<u32>()``), which no
  tokenizer decodes: ``content`` is null;
- the workers' URLs are the mockers' system ports (``/metrics``, with ``worker_id`` = the nvext id in hex; their
  ``/health`` stays 503): no OpenAI API there, so probes go through the frontend or not at all; and no
  ``vllm:prefix_cache_*`` series, so the counter checks are n/a.

Both modes are controls (strict xfail), on the verdicts measured here (README "Verdicts for NVIDIA Dynamo"): with
KV events the router's image-aware block hashes never match the mocker's events, so repeats of one image get
0/N overlap and scatter (rejected by the repeat, transport and concurrent-repeat record claims); without them
(``--no-router-kv-events``) repeats co-locate at N/N, but the same image by URL and by base64 hashes differently
(Dynamo hashes a URL's string: rejected by the transport claim). A release that fixes either makes its case
XPASS and the run fail until this file says ``expect="pass"``.
"""

from dataclasses import replace

from _models import QWEN3_VL_2B

from harness.profiles import Case, RouterCapabilities, Topology

DYNAMO_CAPABILITIES = RouterCapabilities(
    records="dynamo",
    startup_line=True,
    attribution=("nvext",),
    engine_sees_images=False,
    engine_text=False,
    workers_serve_openai=False,
    worker_metrics=False,  # a mocker's /metrics has dynamo_component_* series only, no vllm:prefix_cache_*
)

DYNAMO_KV_EVENTS = Topology(
    "dynamo_kv_events",
    "dynamo.sh",
    marks=("dynamo",),
    workers=2,
    router="dynamo",
    policy="kv_events",
    timeout_s=90,
    expect="fail",
    capabilities=replace(DYNAMO_CAPABILITIES, kv_events=True),  # the router indexes the mockers' KV events
)
DYNAMO_KV_APPROX = replace(
    DYNAMO_KV_EVENTS, name="dynamo_kv_approx", policy="kv_approx", capabilities=DYNAMO_CAPABILITIES
)

CASES = [Case(QWEN3_VL_2B, DYNAMO_KV_EVENTS), Case(QWEN3_VL_2B, DYNAMO_KV_APPROX)]
