"""The shared text tokenizer: the model's tokenizer.json and chat template when found, the stand-in otherwise.

The tokenizer is generated here with the ``tokenizers`` library (a byte-level BPE like Qwen's, trained on a few
sentences, with Qwen's special tokens) and saved with a ``tokenizer_config.json`` carrying Qwen2-VL's chat template.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from harness.mm import text
from harness.mm.families import get_family
from harness.mm.hashing import block_hashes
from harness.mm.options import MMOptions
from harness.mm.prompt import Turn, parse_chat, render_chat
from harness.mm.text import STANDIN, HFTokenizer, load_tokenizer
from harness.mm.tokenizer import SPECIAL_IDS
from tests.helpers import data_url, image_message, png_bytes

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
# Qwen2-VL-Instruct's chat template (tokenizer_config.json on the hub), image and video parts included.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "What colour is this image? The image shows green and blue.",
    "You are a helpful assistant. This is a simulated answer about routers and caches.",
    "Tell me about prefix caching, block hashes, and the numbers 1234567890.",
] * 20
QWEN25 = get_family("qwen2_5_vl")


def build_tokenizer(directory: Path, template: str | None = QWEN2_VL_TEMPLATE) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(QWEN_SPECIALS)  # after the vocabulary, as Qwen's sit after its BPE ranks
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config: dict[str, Any] = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    if template is not None:
        config["chat_template"] = template
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture()
def tok_dir(tmp_path: Path) -> Path:
    text.clear_cache()
    return build_tokenizer(tmp_path / "model")


@pytest.fixture()
def tok(tok_dir: Path) -> HFTokenizer:
    loaded = load_tokenizer(str(tok_dir))
    assert isinstance(loaded, HFTokenizer)
    return loaded


def test_the_model_directory_tokenizer_is_used_and_logged(tok_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="harness.mm.text"):
        loaded = load_tokenizer(str(tok_dir))
    assert not loaded.is_standin and loaded.source == f"local:{tok_dir}"
    (line,) = [r.getMessage() for r in caplog.records if r.name == "harness.mm.text"]
    assert f"local:{tok_dir}" in line and "chat template: the model's" in line
    assert loaded.eos_token_id == loaded.special_id("<|im_end|>") != SPECIAL_IDS["<|im_end|>"]


def test_nothing_found_is_the_stand_in_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    text.clear_cache()
    with caplog.at_level(logging.INFO, logger="harness.mm.text"):
        loaded = load_tokenizer("no-such-org/no-such-model")
    assert loaded is STANDIN
    (line,) = [r.getMessage() for r in caplog.records if r.name == "harness.mm.text"]
    assert "stand-in" in line and "not the model's" in line and "HF_HUB_OFFLINE" in line


def test_an_explicit_tokenizer_wins_and_a_missing_one_is_an_error(tok_dir: Path, tmp_path: Path) -> None:
    bare_model = tmp_path / "bare"
    bare_model.mkdir()
    assert load_tokenizer(str(bare_model), str(tok_dir / "tokenizer.json")).source == f"local:{tok_dir}"
    assert MMOptions(tokenizer=str(tok_dir)).text_tokenizer(str(bare_model)).source == f"local:{tok_dir}"
    with pytest.raises(ValueError, match="--tokenizer"):
        load_tokenizer(str(tok_dir), str(tmp_path / "missing"))


def test_the_hf_cache_is_searched_offline(tok_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's cache layout (models--org--name/snapshots/<rev>/ with refs/main) is found by
    ``try_to_load_from_cache`` without the network, as the geometry's lookup does."""
    cache = tmp_path / "hub"
    snap = cache / "models--acme--tiny-vl" / "snapshots" / ("a" * 40)
    build_tokenizer(snap)
    (cache / "models--acme--tiny-vl" / "refs").mkdir()
    (cache / "models--acme--tiny-vl" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    text.clear_cache()
    loaded = load_tokenizer("acme/tiny-vl")
    assert loaded.source.startswith("hf-cache:") and not loaded.is_standin


@pytest.mark.parametrize(
    "sample",
    [
        "What colour is this image?",
        "<|im_start|>user\nTell me about caches<|im_end|>\n<|im_start|>assistant\n",
        "digits 1234567890 and ünïcödé, emoji 🙂",
        "<|vision_start|><|image_pad|><|vision_end|>trailing",
        "",
    ],
)
def test_piecewise_memoized_encoding_is_the_librarys(tok: HFTokenizer, sample: str) -> None:
    """Split at added tokens, memoized per piece, batch-encoded: the same ids as one ``encode`` of the string."""
    want = tok.tok.encode(sample, add_special_tokens=False).ids
    assert tok.encode(sample) == want
    assert tok.encode(sample) == want  # from the memo
    assert tok.decode(want) == sample


def turns_with_image() -> list[Turn]:
    return parse_chat(
        [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}, {"type": "text", "text": "Hi there"}]}]
    )


def test_the_chat_template_renders_and_placeholders_expand_like_vllm(tok: HFTokenizer) -> None:
    """vLLM renders the template (one ``<|image_pad|>`` per image), tokenizes, then the processor repeats the pad
    token once per feature: the ids are the tokenizer's for the text with the pad written ``count`` times."""
    prompt = render_chat(turns_with_image(), QWEN25, [("h", 5)], tokenizer=tok)
    parts = [{"type": "image"}, {"type": "text", "text": "Hi there"}]
    rendered = tok.render_template([{"role": "user", "content": parts}], True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Hi there<|im_end|>\n<|im_start|>assistant\n"
    )
    expanded = rendered.replace("<|image_pad|>", "<|image_pad|>" * 5)
    assert prompt.token_ids == tok.tok.encode(expanded, add_special_tokens=False).ids
    pad = tok.special_id("<|image_pad|>")
    assert pad is not None and pad != SPECIAL_IDS["<|image_pad|>"]
    (item,) = prompt.mm_items
    assert prompt.token_ids[item.offset : item.offset + 5] == [pad] * 5 and item.offset == prompt.token_ids.index(pad)


def test_without_a_template_the_builtin_one_uses_the_real_tokenizer(tok_dir: Path) -> None:
    """A tokenizer without a chat template renders the built-in Qwen-style text (here the same text as Qwen2-VL's
    template), tokenized by the real tokenizer, pad id from its special tokens."""
    text.clear_cache()
    with_template = load_tokenizer(str(tok_dir))
    bare = build_tokenizer(tok_dir.parent / "bare", template=None)
    without = load_tokenizer(str(bare))
    assert without.chat_template is None
    a = render_chat(turns_with_image(), QWEN25, [("h", 7)], tokenizer=with_template)
    b = render_chat(turns_with_image(), QWEN25, [("h", 7)], tokenizer=without)
    assert a == b
    assert render_chat(turns_with_image(), QWEN25, [("h", 7)]).token_ids != a.token_ids  # the stand-in differs


def test_a_template_that_cannot_write_the_placeholder_falls_back(tok_dir: Path) -> None:
    bare = build_tokenizer(tok_dir.parent / "plain", template="{% for m in messages %}{{ m['content'] }}{% endfor %}")
    plain = load_tokenizer(str(bare))
    # String content format: the placeholder is written first ("\n".join), so one pad per image: the template is used.
    prompt = render_chat(turns_with_image(), QWEN25, [("h", 3)], tokenizer=plain)
    assert plain.decode(prompt.token_ids) == "<|image_pad|>" * 3 + "\nHi there"
    broken = build_tokenizer(tok_dir.parent / "broken", template="{{ raise_exception('no images here') }}")
    fallback = load_tokenizer(str(broken))
    got = render_chat(turns_with_image(), QWEN25, [("h", 3)], tokenizer=fallback)
    assert got.token_ids[: len(fallback.encode("<|im_start|>system"))] == fallback.encode("<|im_start|>system")


def body() -> dict[str, Any]:
    return {"messages": image_message(data_url(png_bytes("green", (640, 480))), "What colour is this image?")}


def test_engine_and_proxy_make_the_same_ids_and_block_hashes(tok_dir: Path) -> None:
    """Both build their tokenizer from the same MMOptions and render through ``render_request``: identical token
    ids (in the model's tokenizer, with its pad id) and identical block hashes."""
    from harness.proxy.config import ProxyConfig
    from harness.proxy.service import Proxy
    from harness.sim.config import parse_args
    from harness.sim.service import SimWorker

    text.clear_cache()
    worker = SimWorker(
        parse_args(["--model", str(tok_dir), "--mm-family", "qwen2_5_vl", "--port", "1", "--speedup", "0",
                    "--num-gpu-blocks-override", "256", "--max-model-len", "4096"])
    )  # fmt: skip
    proxy = Proxy(ProxyConfig(model=str(tok_dir), workers=["http://127.0.0.1:1"], port=0, policy="kv_mm",
                              mm=MMOptions(mm_family="qwen2_5_vl")))  # fmt: skip
    assert worker.tokenizer is proxy.tokenizer and not worker.tokenizer.is_standin

    async def both() -> tuple[Any, Any]:
        rendered = await worker.render(body(), chat=True)
        key = await proxy.routing_key(body(), True, None)
        return rendered.prompt, key

    prompt, key = asyncio.run(both())
    pad = worker.tokenizer.special_id("<|image_pad|>")
    assert prompt.token_ids.count(pad) == prompt.mm_items[0].length > 0
    assert key.hashes == block_hashes(prompt.token_ids, 16, prompt.mm_items) and key.hashes
    assert key.prompt_tokens == len(prompt.token_ids)


def test_worker_endpoints_speak_the_models_tokenizer(tok_dir: Path) -> None:
    """/tokenize counts, /detokenize text, the vocabulary bound and the EOS that ends an answer are the model's."""
    from harness.sim.api import build_app
    from harness.sim.config import parse_args
    from harness.sim.service import SimWorker

    text.clear_cache()
    w = SimWorker(
        parse_args(["--model", str(tok_dir), "--mm-family", "qwen2_5_vl", "--port", "1", "--speedup", "0",
                    "--num-gpu-blocks-override", "256", "--max-model-len", "4096"])
    )  # fmt: skip
    sample = "Tell me about prefix caching and block hashes"

    async def main() -> list[tuple[int, Any]]:
        w.ready = True
        w.engine.start()
        client = TestClient(TestServer(build_app(w)))
        await client.start_server()
        out = []
        try:
            for path, payload in (
                ("/tokenize", {"prompt": sample}),
                ("/detokenize", {"tokens": w.tokenizer.encode(sample)}),
                ("/detokenize", {"tokens": [w.tokenizer.vocab_size]}),  # type: ignore[attr-defined]
                ("/v1/completions", {"prompt": sample, "max_tokens": 200}),
            ):
                resp = await client.post(path, json=payload)
                out.append((resp.status, await resp.json()))
        finally:
            await client.close()
            await w.engine.stop()
        return out

    (s1, tokenized), (s2, detok), (s3, _), (s4, completion) = asyncio.run(main())
    assert s1 == 200 and tokenized["tokens"] == w.tokenizer.encode(sample)
    assert tokenized["count"] != len(STANDIN.encode(sample))
    assert s2 == 200 and detok["prompt"] == sample
    assert s3 == 400
    assert s4 == 200 and completion["choices"][0]["finish_reason"] == "stop"
    answer = completion["choices"][0]["text"]
    # completion_tokens counts the answer in the model's tokens plus its EOS, as vLLM counts them.
    assert completion["usage"]["completion_tokens"] == len(w.tokenizer.encode(answer)) + 1
