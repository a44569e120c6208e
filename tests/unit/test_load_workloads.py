"""Workloads: determinism per seed, the image pool and reuse ratio, sessions, exact token counts, traces."""

from __future__ import annotations

import pytest

from harness.load import traces
from harness.load.bench import prepare
from harness.load.workloads import (
    Dist,
    ImageSpec,
    WorkloadConfig,
    WorkloadError,
    chat_body,
    generate,
    parse_weighted,
    prompt_of,
    render_image,
)
from harness.mm.geometry import resolve_geometry
from harness.mm.images import image_size

GEOM = resolve_geometry("Qwen/Qwen3-VL-2B-Instruct")


def test_same_seed_same_workload_other_seed_other_workload():
    cfg = WorkloadConfig(requests=50, seed=7, images_per_request="choice:0,1,2", turns="uniform:1:3",
                         input_len="uniform:10:40", lora_mix="a:0.3")
    assert generate(cfg) == generate(cfg)
    assert generate(cfg) != generate(WorkloadConfig(**{**cfg.__dict__, "seed": 8}))


def test_reuse_zero_means_every_image_new_and_pool_caps_distinct_images():
    fresh = generate(WorkloadConfig(requests=40, image_reuse=0.0))
    ids = [i.id for r in fresh for i in r.images]
    assert len(ids) == 40 and len(set(ids)) == 40
    pooled = generate(WorkloadConfig(requests=200, image_reuse=0.0, image_pool=5))
    assert len({i.id for r in pooled for i in r.images}) == 5
    reused = generate(WorkloadConfig(requests=400, image_reuse=0.75, seed=3))
    distinct = len({i.id for r in reused for i in r.images})
    assert 60 < distinct < 140  # about a quarter of 400 slots draw a new image


def test_sessions_carry_earlier_turns_and_images_forward():
    reqs = generate(WorkloadConfig(requests=30, turns="3", session_interleave=4))
    by_index = {r.index: r for r in reqs}
    later = [r for r in reqs if r.after is not None]
    assert later
    for r in later:
        prev = by_index[r.after]
        assert r.session == prev.session and r.turns[:-1] == prev.turns
        assert r.index - prev.index == 4  # the interleave
        assert set(i.id for i in prev.images) <= set(i.id for i in r.images)
        body = chat_body(r, "m", lambda img: f"http://x/{img.id}")
        roles = [m["role"] for m in body["messages"]]
        assert roles.count("assistant") == len(r.turns) - 1


def test_prompt_tokens_are_exact_for_the_harness_tokenizer():
    (r,) = generate(WorkloadConfig(requests=1, input_len="50", system_len=20, resolutions="640x480"))
    p = prompt_of(r, GEOM.family, GEOM)
    assert p.num_image_tokens == 300  # Qwen3-VL 640x480 (REFERENCE.md)
    # template: <|im_start|>system\n + 20 words + <|im_end|>\n, <|im_start|>user\n<|vision_start|> pads
    # <|vision_end|> + 50 words + <|im_end|>\n<|im_start|>assistant\n
    text_tokens = p.num_tokens - p.num_image_tokens
    assert 70 < text_tokens < 90


def test_theoretical_hit_rate_is_stated_and_zero_reuse_has_only_system_prompt_hits():
    none = prepare(generate(WorkloadConfig(requests=30, image_reuse=0.0, system_len=0)), "m", geometry=GEOM)
    assert none.theoretical < 0.05  # only the template's first block may repeat
    heavy = prepare(generate(WorkloadConfig(requests=60, image_reuse=0.0, image_pool=2)), "m", geometry=GEOM)
    assert heavy.theoretical > 0.7


def test_rendered_images_are_deterministic_distinct_and_of_the_asked_size():
    a = ImageSpec("img-1", 64, 48, "PNG", "photo", seed=1)
    b = ImageSpec("img-2", 64, 48, "PNG", "photo", seed=1)
    assert render_image(a) == render_image(a)
    assert render_image(a) != render_image(b)  # same seed, different id: bytes still differ
    for content in ("solid", "gradient", "noise", "photo"):
        for fmt in ("PNG", "JPEG"):
            data = render_image(ImageSpec("x", 40, 30, fmt, content, 5))
            assert image_size(data)[:2] == (40, 30)


def test_bad_specs_name_their_flag():
    with pytest.raises(WorkloadError) as exc:
        WorkloadConfig(image_reuse=1.5).validate()
    assert exc.value.flag == "--image-reuse"
    with pytest.raises(WorkloadError) as exc:
        WorkloadConfig(resolutions="big").validate()
    assert exc.value.flag == "--resolutions"
    with pytest.raises(WorkloadError):
        Dist.parse("gamma:1:2")
    with pytest.raises(WorkloadError):
        parse_weighted("GIF", allowed=("PNG", "JPEG"))


def test_own_trace_format_round_trips(tmp_path):
    reqs = generate(WorkloadConfig(requests=12, turns="2", session_interleave=3))
    path = tmp_path / "w.jsonl"
    traces.save(path, reqs)
    assert traces.load(path) == reqs


def test_mooncake_lines_share_prefixes_by_hash_id_and_carry_images():
    lines = [
        '{"timestamp": 1000, "input_length": 10, "output_length": 5, "hash_ids": [1, 2]}',
        '{"timestamp": 500, "input_length": 12, "output_length": 3, "hash_ids": [1, 3], "image_ids": [7]}',
    ]
    reqs = traces.parse_lines(lines, block_tokens=8, image_size=(64, 64))
    assert [r.timestamp_s for r in reqs] == [0.0, 0.5]  # sorted, from the first request
    first, second = reqs
    assert [i.id for i in first.images] == ["7"] and first.images[0].width == 64
    assert len(first.turns[0].text.split(" ")) == 12 and len(second.turns[0].text.split(" ")) == 10
    # both start with hash id 1's block of 8 words
    assert first.turns[0].text.split(" ")[:8] == second.turns[0].text.split(" ")[:8]
    assert first.turns[0].text.split(" ")[8:10] != second.turns[0].text.split(" ")[8:10]
    with pytest.raises(WorkloadError):
        traces.parse_lines(['{"foo": 1}'])
