"""A no-weights model directory that NVIDIA Dynamo's frontend and mocker accept as a Qwen vision-language model.

Dynamo turns on multimodal-aware KV routing for a model whose ``config.json`` names a ``model_type`` its
image-routing registry knows (``qwen2_vl``, ``qwen3_vl``; ``lib/llm/src/preprocessor/mm_routing/image.rs``:
``ImageRoutingProcessor::try_new`` reads ``preprocessor_config.json`` and looks the processor up by model id or
type; ``resolve_image_token_id`` reads the placeholder id from ``config.json`` or ``tokenizer.json``). The
mocker engine needs no weights, so a directory with the four JSON files below is a complete model for a
CPU-only Dynamo stack: no hub, no network, same bytes on every machine.

The tokenizer is byte-level BPE without merges (every byte is a token), plus Qwen's special tokens: small
(a few kB), exact for any text, and decodable for any id below ``vocab_size`` (the mocker emits arbitrary ids).

This file imports nothing from the harness: launch scripts run it with the Dynamo environment's own Python
(``python dynamo.py DIR --model-type qwen3_vl``), which has ``tokenizers`` through ``transformers``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

ModelType = Literal["qwen2_vl", "qwen3_vl"]
MODEL_TYPES: tuple[str, ...] = get_args(ModelType)

#: Qwen2-VL's special tokens, in the order Qwen's own ``tokenizer.json`` lists its added tokens.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
NUM_BYTES = 256


def special_id(token: str) -> int:
    """Ids: the 256 byte tokens first, then the special tokens."""
    return NUM_BYTES + SPECIAL_TOKENS.index(token)


VOCAB_SIZE = NUM_BYTES + len(SPECIAL_TOKENS)

# Qwen2-VL's chat template (``tokenizer_config.json`` of Qwen/Qwen2-VL-2B-Instruct): a default system prompt,
# one ``<|vision_start|><|image_pad|><|vision_end|>`` per image part. Qwen3-VL's drops the default system prompt.
_QWEN_TEMPLATE = (
    # No whitespace-trimming tags: the newlines after ``<|im_end|>`` and the role are part of the prompt.
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' and SYSTEM %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or content['type'] == 'image_url' or 'image' in content "
    "or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template(model_type: ModelType) -> str:
    """The Jinja chat template for ``model_type`` (with the default system prompt for Qwen2-VL only)."""
    return _QWEN_TEMPLATE.replace("SYSTEM", "true" if model_type == "qwen2_vl" else "false")


def _vision(model_type: ModelType) -> dict[str, int]:
    # Qwen2-VL: 14-pixel patches; Qwen3-VL: 16 (HF configs of Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen3-VL-2B-Instruct).
    patch = 14 if model_type == "qwen2_vl" else 16
    return {"patch_size": patch, "spatial_merge_size": 2, "temporal_patch_size": 2}


def config_json(model_type: ModelType, max_model_len: int = 8192) -> dict[str, Any]:
    """A ``config.json`` with the fields Dynamo reads: model type, architecture, placeholder ids, context length,
    vocabulary, and the vision tower's patch geometry. Sizes are tiny: nothing is ever loaded."""
    arch = "Qwen2VLForConditionalGeneration" if model_type == "qwen2_vl" else "Qwen3VLForConditionalGeneration"
    text = {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": max_model_len,
        "rms_norm_eps": 1e-6,
        "torch_dtype": "bfloat16",
    }
    cfg: dict[str, Any] = {
        "architectures": [arch],
        "model_type": model_type,
        **text,
        "bos_token_id": special_id("<|endoftext|>"),
        "eos_token_id": special_id("<|im_end|>"),
        "image_token_id": special_id("<|image_pad|>"),
        "video_token_id": special_id("<|video_pad|>"),
        "vision_start_token_id": special_id("<|vision_start|>"),
        "vision_end_token_id": special_id("<|vision_end|>"),
        "vision_config": {**_vision(model_type), "hidden_size": 64, "depth": 1, "in_chans": 3},
        "tie_word_embeddings": True,
    }
    if model_type == "qwen3_vl":  # Qwen3-VL nests the language model's fields under text_config
        cfg["text_config"] = {"model_type": "qwen3_vl_text", **text}
    return cfg


def preprocessor_config_json(model_type: ModelType) -> dict[str, Any]:
    """The image processor's ``preprocessor_config.json`` (pixel budget and patch geometry decide the image's
    token count: ``smart_resize`` in ``transformers/models/qwen2_vl/image_processing_qwen2_vl.py``)."""
    v = _vision(model_type)
    if model_type == "qwen2_vl":
        min_pixels, max_pixels = 56 * 56, 28 * 28 * 1280
    else:
        min_pixels, max_pixels = 65536, 16777216
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor" if model_type == "qwen2_vl" else "Qwen3VLProcessor",
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
        "do_convert_rgb": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": v["patch_size"],
        "merge_size": v["spatial_merge_size"],
        "temporal_patch_size": v["temporal_patch_size"],
    }


def tokenizer_config_json(model_type: ModelType) -> dict[str, Any]:
    return {
        "tokenizer_class": "Qwen2TokenizerFast",
        "model_max_length": 32768,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": chat_template(model_type),
        "added_tokens_decoder": {
            str(special_id(t)): {
                "content": t,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
                "special": True,
            }
            for t in SPECIAL_TOKENS
        },
    }


def generation_config_json() -> dict[str, Any]:
    return {"bos_token_id": special_id("<|endoftext|>"), "eos_token_id": [special_id("<|im_end|>")]}


def tokenizer_json() -> str:
    """A byte-level BPE ``tokenizer.json`` built with the ``tokenizers`` library: 256 byte tokens, no merges, and
    the special tokens; ``Tokenizer.from_str`` of the result encodes and decodes any text exactly."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins GPT-2 maps bytes to
    byte_order = sorted(alphabet, key=_byte_of)
    vocab = {ch: i for i, ch in enumerate(byte_order)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return str(tok.to_str(pretty=True))


def _byte_of(ch: str) -> int:
    """The byte GPT-2's byte-level alphabet maps to ``ch`` (``bytes_to_unicode`` in GPT-2's ``encoder.py``)."""
    code = ord(ch)
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def model_files(model_type: ModelType, max_model_len: int = 8192) -> dict[str, str]:
    """File name -> contents of the model directory (pure; ``write_model_dir`` writes them)."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    docs: Mapping[str, Any] = {
        "config.json": config_json(model_type, max_model_len),
        "preprocessor_config.json": preprocessor_config_json(model_type),
        "tokenizer_config.json": tokenizer_config_json(model_type),
        "generation_config.json": generation_config_json(),
    }
    files = {name: json.dumps(doc, indent=2) + "\n" for name, doc in docs.items()}
    files["tokenizer.json"] = tokenizer_json()
    return files


def write_model_dir(directory: Path, model_type: ModelType, max_model_len: int = 8192) -> Path:
    """Write the model directory (idempotent: files whose contents are already right are left alone)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in model_files(model_type, max_model_len).items():
        path = directory / name
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return directory


def model_type_for(family: str | None) -> ModelType:
    """The Dynamo ``model_type`` for a harness family: Qwen2.5-VL routes like Qwen2-VL (same 14-pixel geometry)."""
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return "qwen2_vl"
    if family in (None, "", "qwen3_vl"):
        return "qwen3_vl"
    raise ValueError(f"no Dynamo model directory for family {family!r} (supported: qwen2_vl, qwen2_5_vl, qwen3_vl)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write a no-weights Qwen-VL model directory for Dynamo's mocker.")
    p.add_argument("directory", type=Path)
    p.add_argument("--family", default="qwen3_vl", help="harness family: qwen2_vl, qwen2_5_vl or qwen3_vl")
    p.add_argument("--max-model-len", type=int, default=8192)
    args = p.parse_args(argv)
    try:
        model_type = model_type_for(args.family)
    except ValueError as exc:
        print(f"dynamo.py: --family: {exc}", file=sys.stderr)
        return 2
    print(write_model_dir(args.directory, model_type, args.max_model_len))
    return 0


if __name__ == "__main__":
    sys.exit(main())
