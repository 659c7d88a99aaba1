"""Training validation decodes exactly like inference (same slow-SentencePiece codec), so its scores are honest."""

from __future__ import annotations

import json

import pytest

from tests.conftest import CXR, FIXTURES

QUERY = "Provide a detailed description of the findings in the radiology image."


@pytest.fixture(scope="module")
def built(tmp_path_factory):  # noqa: ANN201
    from libra_cli.training.model import build_model
    from libra_cli.training.recipe import load_recipe

    out = tmp_path_factory.mktemp("val")
    recipe = load_recipe("tiny-cpu", "align", {
        "model_name_or_path": str(FIXTURES / "tiny-libra-tac"), "data_path": str(out / "unused.json"),
        "image_folder": str(CXR), "output_dir": str(out / "run"), "eval_max_new_tokens": 24})
    return build_model(recipe, "align"), recipe


def test_validation_text_equals_infer_text(built) -> None:  # noqa: ANN001
    from libra_cli.training.validation import validation_reports

    b, recipe = built
    expected = json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())
    record = {"id": "s1", "image": ["current.jpg", "prior.jpg"],
              "conversations": [{"from": "human", "value": "<image>\n" + QUERY}, {"from": "gpt", "value": "ref"}]}
    preds, refs = validation_reports(b, recipe, [record])
    assert preds == [expected["greedy"]["returned_text"]] and refs == ["ref"]


def test_validation_decodes_byte_fallback_like_the_original(built) -> None:  # noqa: ANN001
    """The fixture's beam ids end in byte-fallback tokens: the original decodes them to '>\\ufffd', the fast
    tokenizer to '\\ufffd\\ufffd'; validation must say what the original (and libra infer) says."""
    from libra_cli.training.validation import validation_model

    b, recipe = built
    expected = json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())
    ids = expected["beam"]["sequences"][0]["new_token_ids"]
    loaded = validation_model(b, recipe)
    assert loaded.codec is not None
    assert loaded.decode(ids).strip() == expected["beam"]["returned_text"]
    assert b.tokenizer.decode(ids, skip_special_tokens=True).strip() != expected["beam"]["returned_text"]
