"""The no-weights Qwen-VL model directory written for Dynamo's frontend and mocker: the fields Dynamo's image
routing reads, a tokenizer that round-trips any text and knows the placeholders, and an idempotent writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from harness.stack.dynamo import (
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    chat_template,
    main,
    model_files,
    model_type_for,
    special_id,
    write_model_dir,
)


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen3_vl"])
def test_config_names_the_model_type_and_the_placeholder_ids(model_type: str) -> None:
    files = model_files(model_type)  # type: ignore[arg-type]
    cfg = json.loads(files["config.json"])
    assert cfg["model_type"] == model_type
    assert cfg["image_token_id"] == special_id("<|image_pad|>")
    assert cfg["vocab_size"] == VOCAB_SIZE
    pre = json.loads(files["preprocessor_config.json"])
    patch = 14 if model_type == "qwen2_vl" else 16
    assert (pre["patch_size"], pre["merge_size"], cfg["vision_config"]["patch_size"]) == (patch, 2, patch)
    assert "<|image_pad|>" in json.loads(files["tokenizer_config.json"])["chat_template"]


def test_tokenizer_round_trips_text_and_knows_the_special_tokens() -> None:
    tok = Tokenizer.from_str(model_files("qwen3_vl")["tokenizer.json"])
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What colour is this? é 😀<|im_end|>\n"
    ids = tok.encode(text).ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    for t in SPECIAL_TOKENS:
        assert tok.token_to_id(t) == special_id(t)
    assert tok.get_vocab_size() == VOCAB_SIZE
    assert max(ids) < VOCAB_SIZE and ids.count(special_id("<|image_pad|>")) == 1


def test_chat_template_has_no_whitespace_trimming_and_the_system_prompt_only_for_qwen2() -> None:
    for model_type in ("qwen2_vl", "qwen3_vl"):
        assert "{%-" not in chat_template(model_type) and "-%}" not in chat_template(model_type)  # type: ignore[arg-type]
    assert "You are a helpful assistant." in chat_template("qwen2_vl")
    assert "and true %}" in chat_template("qwen2_vl") and "and false %}" in chat_template("qwen3_vl")


def test_writer_is_idempotent_and_rejects_unknown_families(tmp_path: Path) -> None:
    d = write_model_dir(tmp_path / "m", "qwen3_vl")
    mtimes = {p.name: p.stat().st_mtime_ns for p in d.iterdir()}
    assert set(mtimes) == {"config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                           "generation_config.json"}
    write_model_dir(d, "qwen3_vl")
    assert {p.name: p.stat().st_mtime_ns for p in d.iterdir()} == mtimes
    assert model_type_for("qwen2_5_vl") == "qwen2_vl" and model_type_for(None) == "qwen3_vl"
    with pytest.raises(ValueError, match="llava"):
        model_type_for("llava")
    assert main([str(tmp_path / "x"), "--family", "llava"]) == 2
    with pytest.raises(ValueError, match="model_type"):
        model_files("llava")  # type: ignore[arg-type]
