"""Chat parsing and rendering: errors name the field, the template, placeholder runs and their offsets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from harness.mm.families import get_family
from harness.mm.prompt import (
    ImagePart,
    MMItem,
    Prompt,
    PromptError,
    Turn,
    image_parts,
    parse_chat,
    render_chat,
    render_text,
)
from harness.mm.tokenizer import SPECIAL_IDS, VOCAB_SIZE, decode, encode

QWEN25 = get_family("qwen2_5_vl")
QWEN3 = get_family("qwen3_vl")
LLAVA = get_family("llava")
PHI3V = get_family("phi3_v")
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
PAD = "<|image_pad|>"


def img(url: str = "http://127.0.0.1/a.png", **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}, **extra}


def txt(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def pad_runs(ids: list[int], pad_id: int) -> list[tuple[int, int]]:
    """(offset, length) of each maximal run of ``pad_id``, found independently of the renderer."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(ids):
        if ids[i] == pad_id:
            j = i
            while j < len(ids) and ids[j] == pad_id:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


# ---------------------------------------------------------------------------------------------- parse_chat


@pytest.mark.parametrize("messages", ["hello", {"role": "user", "content": "hi"}, None, [], 3])
def test_messages_must_be_non_empty_list(messages: Any) -> None:
    with pytest.raises(PromptError, match="non-empty list") as info:
        parse_chat(messages)
    assert info.value.param == "messages"


def test_message_must_be_object() -> None:
    with pytest.raises(PromptError) as info:
        parse_chat([{"role": "user", "content": "hi"}, "just text"])
    assert info.value.param == "messages[1]"


@pytest.mark.parametrize("role", ["robot", "User", "", None, 5, ["user"], {"name": "user"}])
def test_bad_roles(role: Any) -> None:
    with pytest.raises(PromptError, match="role must be one of") as info:
        parse_chat([{"role": "user", "content": "a"}, {"role": role, "content": "b"}])
    assert info.value.param == "messages[1].role"


def test_missing_role() -> None:
    with pytest.raises(PromptError) as info:
        parse_chat([{"content": "b"}])
    assert info.value.param == "messages[0].role"


@pytest.mark.parametrize("role", ["system", "user", "assistant", "tool", "developer"])
def test_good_roles(role: str) -> None:
    assert parse_chat([{"role": role, "content": "x"}]) == [Turn(role=role, parts=["x"])]


@pytest.mark.parametrize("content", [5, {"type": "text", "text": "x"}, b"bytes", 1.5])
def test_content_must_be_string_or_list(content: Any) -> None:
    with pytest.raises(PromptError) as info:
        parse_chat([{"role": "user", "content": content}])
    assert info.value.param == "messages[0].content"


def test_content_none_is_empty_turn() -> None:
    assert parse_chat([{"role": "assistant", "content": None}]) == [Turn(role="assistant", parts=[])]


@pytest.mark.parametrize("kind", ["input_audio", "video_url", "image_embeds", "audio_url", "file"])
def test_unsupported_part_types(kind: str) -> None:
    with pytest.raises(PromptError, match="not supported") as info:
        parse_chat([{"role": "user", "content": [txt("a"), {"type": kind, kind: {}}]}])
    assert kind in str(info.value)
    assert info.value.param == "messages[0].content[1].type"


@pytest.mark.parametrize("kind", ["image", "txt", None, 7, ["text"]])
def test_unknown_part_types(kind: Any) -> None:
    with pytest.raises(PromptError, match="unknown content part type") as info:
        parse_chat([{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": kind}]}])
    assert info.value.param == "messages[1].content[0].type"


@pytest.mark.parametrize("part", ["plain string", 5, None, ["text"]])
def test_part_must_be_object(part: Any) -> None:
    with pytest.raises(PromptError, match="must be an object") as info:
        parse_chat([{"role": "user", "content": [txt("ok"), txt("ok"), part]}])
    assert info.value.param == "messages[0].content[2]"


@pytest.mark.parametrize("text", [None, 5, ["a"]])
def test_text_part_needs_string(text: Any) -> None:
    with pytest.raises(PromptError) as info:
        parse_chat([{"role": "user", "content": [{"type": "text", "text": text}]}])
    assert info.value.param == "messages[0].content[0].text"


@pytest.mark.parametrize("image_url", [None, {}, {"url": ""}, {"url": 5}, "", 7])
def test_image_part_needs_url(image_url: Any) -> None:
    with pytest.raises(PromptError, match=r"image_url\.url") as info:
        parse_chat([{"role": "user", "content": [{"type": "image_url", "image_url": image_url}]}])
    assert info.value.param == "messages[0].content[0].image_url"


def test_image_uuid_must_be_string() -> None:
    with pytest.raises(PromptError) as info:
        parse_chat([{"role": "user", "content": [img(uuid=42)]}])
    assert info.value.param == "messages[0].content[0].uuid"


def test_parse_valid_mixed_content() -> None:
    turns = parse_chat(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [txt("Look: "), img("data:image/png;base64,AAAA", uuid="u1"), txt("?")]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": [{"type": "image_url", "image_url": "http://127.0.0.1/b.png"}]},
        ]
    )
    assert [t.role for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[1].parts == ["Look: ", ImagePart(url="data:image/png;base64,AAAA", uuid="u1"), "?"]
    assert turns[3].parts == [ImagePart(url="http://127.0.0.1/b.png")]  # string shorthand for image_url
    assert image_parts(turns) == [
        ImagePart(url="data:image/png;base64,AAAA", uuid="u1"),
        ImagePart(url="http://127.0.0.1/b.png"),
    ]


# --------------------------------------------------------------------------------------------- render_chat


def test_qwen25_inserts_default_system_turn() -> None:
    prompt = render_chat(parse_chat([{"role": "user", "content": "Hi"}]), QWEN25, [])
    expected = SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert decode(prompt.token_ids) == expected
    assert prompt.token_ids == encode(expected)
    assert prompt.mm_items == []


def test_qwen25_keeps_given_system_turn() -> None:
    turns = parse_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    text = decode(render_chat(turns, QWEN25, []).token_ids)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert "helpful assistant" not in text


def test_qwen3_has_no_default_system_turn() -> None:
    prompt = render_chat(parse_chat([{"role": "user", "content": "Hi"}]), QWEN3, [])
    assert decode(prompt.token_ids) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_without_generation_prompt() -> None:
    prompt = render_chat(parse_chat([{"role": "user", "content": "Hi"}]), QWEN3, [], add_generation_prompt=False)
    assert decode(prompt.token_ids) == "<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.parametrize("n", [1, 5, 999])
def test_single_image_placeholder_run(n: int) -> None:
    turns = parse_chat([{"role": "user", "content": [txt("Describe "), img(), txt(" please")]}])
    prompt = render_chat(turns, QWEN25, [("hash-a", n)])
    head = SYSTEM + "<|im_start|>user\nDescribe <|vision_start|>"
    tail = "<|vision_end|> please<|im_end|>\n<|im_start|>assistant\n"
    offset = len(encode(head))
    assert prompt.token_ids == encode(head) + [SPECIAL_IDS[PAD]] * n + encode(tail)
    assert prompt.mm_items == [MMItem(hash="hash-a", offset=offset, length=n)]
    assert pad_runs(prompt.token_ids, SPECIAL_IDS[PAD]) == [(offset, n)]
    assert prompt.token_ids.count(SPECIAL_IDS[PAD]) == n  # exactly N pads, no more
    assert prompt.token_ids[offset - 1] == SPECIAL_IDS["<|vision_start|>"]
    assert prompt.token_ids[offset + n] == SPECIAL_IDS["<|vision_end|>"]
    assert prompt.num_image_tokens == n
    assert prompt.num_tokens == len(prompt.token_ids)


def test_multiple_images_offsets() -> None:
    turns = parse_chat(
        [
            {"role": "user", "content": [img(), txt("and"), img("http://127.0.0.1/b.png")]},
            {"role": "assistant", "content": "Two dogs."},
            {"role": "user", "content": [txt("Now this: "), img("http://127.0.0.1/c.png"), txt("?")]},
        ]
    )
    counts = [("h1", 4), ("h2", 7), ("h3", 3)]
    prompt = render_chat(turns, QWEN3, counts)
    expected_text = (
        "<|im_start|>user\n<|vision_start|>"
        + PAD * 4
        + "<|vision_end|>and<|vision_start|>"
        + PAD * 7
        + "<|vision_end|><|im_end|>\n<|im_start|>assistant\nTwo dogs.<|im_end|>\n"
        + "<|im_start|>user\nNow this: <|vision_start|>"
        + PAD * 3
        + "<|vision_end|>?<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )
    # Special tokens split the text, so encoding the whole expected prompt gives the same ids.
    assert prompt.token_ids == encode(expected_text)
    runs = pad_runs(prompt.token_ids, SPECIAL_IDS[PAD])
    assert [(m.offset, m.length) for m in prompt.mm_items] == runs
    assert [m.hash for m in prompt.mm_items] == ["h1", "h2", "h3"]
    assert [m.length for m in prompt.mm_items] == [4, 7, 3]
    # Hand-checked first offset: "<|im_start|>" (1 id), "user" (one 4-byte piece: "use" + "r", 2 ids), "\n" (its
    # own whitespace piece, 1 id), "<|vision_start|>" (1 id) -> the pads start at 5.
    assert prompt.mm_items[0].offset == 5
    assert prompt.mm_items[1].offset > prompt.mm_items[0].offset + 4
    assert prompt.num_image_tokens == 14


def test_adjacent_images_are_separate_items() -> None:
    turns = parse_chat([{"role": "user", "content": [img(), img()]}])
    prompt = render_chat(turns, QWEN3, [("a", 2), ("b", 2)])
    a, b = prompt.mm_items
    # The runs are separated by "<|vision_end|><|vision_start|>": exactly two tokens apart.
    assert b.offset == a.offset + a.length + 2


@pytest.mark.parametrize(("family", "pad"), [(LLAVA, "<image>"), (PHI3V, "<|image|>")])
def test_other_families_placeholders(family: Any, pad: str) -> None:
    turns = parse_chat([{"role": "user", "content": [img(), txt("What is this?")]}])
    prompt = render_chat(turns, family, [("h", 576)])
    expected = "<|im_start|>user\n" + pad * 576 + "\nWhat is this?<|im_end|>\n<|im_start|>assistant\n"
    assert prompt.token_ids == encode(expected)
    assert pad_runs(prompt.token_ids, SPECIAL_IDS[pad]) == [(prompt.mm_items[0].offset, 576)]
    assert prompt.mm_items[0].offset == len(encode("<|im_start|>user\n"))


def test_fewer_images_than_parts() -> None:
    turns = parse_chat([{"role": "user", "content": [img(), img()]}])
    with pytest.raises(ValueError, match="fewer images"):
        render_chat(turns, QWEN25, [("only-one", 3)])


def test_same_prompt_same_ids() -> None:
    """Proxy and engine render independently; the result must be identical."""
    messages = [{"role": "user", "content": [txt("x" * 300), img(), txt("y")]}]
    a = render_chat(parse_chat(messages), QWEN25, [("h", 10)])
    b = render_chat(parse_chat(messages), QWEN25, [("h", 10)])
    assert a == b


def test_image_hash_does_not_change_tokens() -> None:
    turns = parse_chat([{"role": "user", "content": [img(), txt("?")]}])
    a = render_chat(turns, QWEN25, [("one", 8)])
    b = render_chat(turns, QWEN25, [("two", 8)])
    assert a.token_ids == b.token_ids
    assert a.mm_items[0].offset == b.mm_items[0].offset
    assert a.mm_items[0].hash != b.mm_items[0].hash


# --------------------------------------------------------------------------------------------- render_text


def test_render_text_string() -> None:
    prompt = render_text("Hello <|im_end|> world")
    assert prompt.token_ids == encode("Hello <|im_end|> world")
    assert prompt.mm_items == []


def test_render_text_token_ids() -> None:
    ids = [*encode("some text"), SPECIAL_IDS["<|im_end|>"]]
    assert render_text(ids) == Prompt(token_ids=ids)
    assert render_text(tuple(ids)).token_ids == ids
    assert render_text([]).token_ids == []


@pytest.mark.parametrize("bad", [-1, VOCAB_SIZE, 100, "5", 1.0, None])
def test_render_text_rejects_bad_ids(bad: Any) -> None:
    with pytest.raises(PromptError, match="out of vocabulary") as info:
        render_text([300, bad, 301])
    assert info.value.param == "prompt"
    assert json.dumps(bad) in str(info.value)  # the client's value as JSON (null, "5"), never a Python repr
