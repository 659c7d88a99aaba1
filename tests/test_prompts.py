"""Every template renders as the original; tokenisation matches the original's ids."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from libra_cli.checkpoint.tokenizer import SpmCodec
from libra_cli.errors import InputError
from libra_cli.prompts import build_prompt, get_template, template_names, tokenize_with_image
from tests.conftest import FIXTURES, SHARED

TEMPLATES = json.loads((SHARED / "spec" / "conv_templates.json").read_text())


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_single_turn_rendering(name: str) -> None:
    text, stop = build_prompt("{query}", name)
    assert text == TEMPLATES[name]["rendered_single_turn"]
    assert stop == TEMPLATES[name]["stop_string"]


def test_all_templates_known() -> None:
    assert set(template_names()) == set(TEMPLATES)


def test_unknown_template_suggests() -> None:
    with pytest.raises(InputError, match="did you mean 'libra_v1'"):
        get_template("libra_v2")


def test_context_and_follow_up() -> None:
    text, _ = build_prompt("Q1", "libra_v1", context="Dyspnea.", history=[("First?", "Answer one.")])
    assert text.endswith("USER: <image>\nFirst? Following clinical context: Dyspnea. ASSISTANT: Answer one.</s>USER: Q1 ASSISTANT:")


def test_tokenizer_ids_match_original_slow_tokenizer() -> None:
    """The original used the slow tokenizer; the fast one differs on runs of spaces."""
    exp = json.loads((FIXTURES / "expected" / "tokenizer.json").read_text())
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizer")
    codec = SpmCodec.for_folder(str(FIXTURES / "tokenizer"), tok)
    assert codec is not None
    for s in exp["strings"]:
        assert codec.encode(s["text"]) == s["slow_ids"], s["text"]


def test_image_chunks_drop_later_bos() -> None:
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizer")
    ids = tokenize_with_image("A <image>\nB <image> C", tok)
    assert ids[0] == tok.bos_token_id
    assert ids.count(-200) == 2
    assert ids.count(tok.bos_token_id) == 1
