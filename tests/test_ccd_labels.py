"""CCD labels: the guidance sentence, the token bias, label files and the experts (no Libra model needed).

Expected values come from the CCD reference code as ``shared/spec/ccd.md`` describes it, and from
the line-by-line reference in ``tests/ccd_reference.py``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from libra_cli.ccd import labels as L
from libra_cli.ccd.experts import FINDINGS, ZeroShotExpert, densenet_labels
from libra_cli.ccd.sources import LabelFile
from libra_cli.errors import InputError
from tests.ccd_reference import clinical_guide, token_score_dict
from tests.conftest import CXR, FIXTURES

XRV_CHEX = ["Atelectasis", "Consolidation", "", "Pneumothorax", "Edema", "", "", "Effusion", "Pneumonia", "",
            "Cardiomegaly", "", "", "", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
MEDSIGLIP_ORDER = [*FINDINGS, "Frontal", "Lateral"]


@pytest.fixture(scope="module")
def codec_model():
    """The fixture's tokenizer behind a LoadedModel-like object (slow-exact SentencePiece codec)."""
    from transformers import AutoTokenizer

    from libra_cli.checkpoint.tokenizer import SpmCodec

    tok = AutoTokenizer.from_pretrained(FIXTURES / "tiny-libra-tac")
    codec = SpmCodec.for_folder(str(FIXTURES / "tiny-libra-tac"), tok)
    assert codec is not None

    class Loaded:
        tokenizer = tok

        def __init__(self) -> None:
            self.codec = codec

        def encode(self, text: str) -> list[int]:
            return codec.encode(text)

    return Loaded()


@pytest.mark.parametrize("labels,expected", [
    ({"Atelectasis": 0.2, "Effusion": 0.7, "Cardiomegaly": 0.5, "Frontal": 0.9, "Lateral": 0.1},
     "Attention to the following clinical instructions: Effusion; Cardiomegaly. View type: Frontal."),
    ({"Frontal": 0.5, "Lateral": 0.5}, " View type: Frontal, Lateral."),
    ({"Pleural Effusion": 0.66, "lung_opacity": 0.9}, "Attention to the following clinical instructions: Pleural Effusion; lung_opacity. "),
    ({"Edema": 0.49999, "Frontal": 0.1}, "No clinical guidance based on current findings."),
    ({}, "No clinical guidance based on current findings."),
])
def test_guide_sentence_matches_reference(labels: dict, expected: str) -> None:
    assert L.guide_sentence(labels) == expected == clinical_guide(labels)


def test_guide_threshold_and_order() -> None:
    labels = {"Support Devices": 0.3, "Atelectasis": 0.35, "Frontal": 0.4}
    assert L.guide_sentence(labels, 0.3) == ("Attention to the following clinical instructions: Support Devices; "
                                             "Atelectasis. View type: Frontal.")


def test_token_scores_spec_examples(codec_model) -> None:
    pieces = L.label_pieces(codec_model)
    assert pieces("Lung Opacity") == (["▁Lung", "▁", "O", "pacit", "y"], [652, 936, 966, 394, 958])
    s = L.token_scores({"Lung Opacity": 0.91}, pieces)
    assert s[652] == pytest.approx(0.91) and s[936] == pytest.approx(0.91 * 0.95)
    assert s[966] == pytest.approx(0.91 * 0.95 ** 2) and 394 not in s and 958 not in s
    s = L.token_scores({"Enlarged Cardiomediastinum": 0.58}, pieces)
    assert s[936] == pytest.approx(0.58) and s[967] == pytest.approx(0.58 * 0.95) and s[318] == pytest.approx(0.58 * 0.95 ** 4)
    assert 942 not in s  # "n" follows "E", not a lone "▁": excluded


def test_token_scores_equal_reference_for_every_label(codec_model) -> None:
    labels = {k: 0.05 + 0.9 * i / 20 for i, k in enumerate(MEDSIGLIP_ORDER + [x for x in XRV_CHEX if x])}
    got = L.token_scores(labels, L.label_pieces(codec_model))
    assert got == token_score_dict(labels, codec_model.tokenizer)


def test_bias_is_logit_clipped_at_log_gamma() -> None:
    assert L.bias_value(0.5, 10) == 0.0
    assert L.bias_value(0.95, 10) == pytest.approx(math.log(10))
    assert L.bias_value(0.01, 10) == pytest.approx(-math.log(10))
    assert L.bias_value(0.7, 2) == pytest.approx(math.log(2))
    assert L.bias_value(0.6, 10) == pytest.approx(math.log(0.6 / 0.4))
    assert L.bias_value(1.0, 1) == pytest.approx(math.log((1 - 1e-6) / 1e-6))  # gamma <= 1: no clipping
    v = L.bias_vector({3: 0.95, 5: 0.2}, 10, 8)
    assert v.dtype == torch.float32 and v[3] == pytest.approx(math.log(10)) and v[0] == 0 and v.shape == (8,)


def _write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


class _S:
    def __init__(self, id: str | None) -> None:  # noqa: A002
        self.id = id


def test_label_files_keep_key_order(tmp_path: Path) -> None:
    single = _write(tmp_path, "one.json", '{"Lateral": 0.2, "Edema": 0.7, "Frontal": 0.8}')
    f = LabelFile.read(single)
    assert list(f.for_sample(_S(None))) == ["Lateral", "Edema", "Frontal"] and f.for_sample(_S("x"))["Edema"] == 0.7
    by_id = _write(tmp_path, "ids.json", json.dumps({"q1": {"Edema": 0.9, "Frontal": 1}, "q2": {"Fracture": 0.1}}))
    f = LabelFile.read(by_id)
    assert f.for_sample(_S("q1")) == {"Edema": 0.9, "Frontal": 1.0} and f.for_sample(_S("q2")) == {"Fracture": 0.1}
    jsonl = _write(tmp_path, "l.jsonl", '{"question_id": 7, "labels": {"B": 0.6, "A": 0.1}}\n{"id": "8", "Z": 0.2, "Y": 1}\n')
    f = LabelFile.read(jsonl)
    assert list(f.for_sample(_S("7"))) == ["B", "A"] and f.for_sample(_S("8")) == {"Z": 0.2, "Y": 1.0}
    arr = _write(tmp_path, "a.json", '[{"question_id": "a", "labels": {"Edema": 0.5}}]')
    assert LabelFile.read(arr).for_sample(_S(None)) == {"Edema": 0.5}  # one study, no id needed
    csv = _write(tmp_path, "l.csv", "question_id,Lung Opacity,Edema,Frontal,Lateral\nq1,0.9,,0.8,0.2\nq2,0.1,0.6,0.3,0.7\n")
    f = LabelFile.read(csv)
    assert f.for_sample(_S("q1")) == {"Lung Opacity": 0.9, "Frontal": 0.8, "Lateral": 0.2}
    assert list(f.for_sample(_S("q2"))) == ["Lung Opacity", "Edema", "Frontal", "Lateral"]
    one_row = _write(tmp_path, "s.csv", "Edema,Frontal\n0.7,0.9\n")
    assert LabelFile.read(one_row).for_sample(_S("any")) == {"Edema": 0.7, "Frontal": 0.9}


@pytest.mark.parametrize("name,text,sample,msg", [
    ("bad.json", '{"Edema": 1.5}', None, "probabilities in [0, 1]"),
    ("bad2.json", '{"Edema": "high"}', None, "probabilities in [0, 1]"),
    ("ids.json", '{"q1": {"Edema": 0.5}}', "q2", "no labels for question_id 'q2'"),
    ("ids2.json", '{"q1": {"Edema": 0.5}, "q2": {"Edema": 0.1}}', None, "has no id"),
    ("noid.jsonl", '{"Edema": 0.5}\n{"Edema": 0.1}\n', "q", "no question_id"),
    ("two.csv", "Edema\n0.1\n0.2\n", "q", "no question_id column"),
    ("nan.csv", "id,Edema\nq,abc\n", "q", "is not a number"),
    ("broken.json", '{"Edema": 0.5', None, "not valid JSON"),
])
def test_label_file_errors_are_one_line(tmp_path: Path, name: str, text: str, sample: str | None, msg: str) -> None:
    path = _write(tmp_path, name, text)
    with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("]", r"\]")) as e:
        LabelFile.read(path).for_sample(_S(sample))
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="does not exist"):
        LabelFile.read(tmp_path / "missing.json")


def test_densenet_labels_drop_unnamed_and_add_view() -> None:
    scores = [0.01 * i for i in range(len(XRV_CHEX))]
    out = densenet_labels(XRV_CHEX, scores, ["Frontal", "Lateral"], [0.8, 0.2])
    assert list(out) == [x for x in XRV_CHEX if x] + ["Frontal", "Lateral"] and len(out) == 13
    assert out["Effusion"] == pytest.approx(0.07) and out["Lateral"] == pytest.approx(0.2)


def test_densenet_without_torchxrayvision_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from libra_cli.ccd import experts

    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # import fails as when not installed
    with pytest.raises(InputError, match="pip install torchxrayvision"):
        experts.DenseNetExpert("cpu")


def make_tiny_siglip(out: Path) -> Path:
    """A random SigLIP image-text model with the fixture tokenizer: the MedSigLIP expert's code path, offline."""
    from transformers import AutoTokenizer, SiglipConfig, SiglipModel, SiglipProcessor
    try:  # the PIL processor has its own module since transformers 5.x; earlier 5.x releases have only the one class
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    except ImportError:
        from transformers import SiglipImageProcessor as SiglipImageProcessorPil

    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = SiglipConfig(text_config=dict(vocab_size=1000, max_position_embeddings=64, **small),
                       vision_config=dict(image_size=56, patch_size=14, **small))
    SiglipModel(cfg).save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizer", model_max_length=64)
    SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": 56, "width": 56}), tokenizer=tok).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_siglip(tmp_path_factory.mktemp("siglip") / "tiny-siglip")


def test_zero_shot_expert_follows_medsiglip_reference(tiny_siglip: Path) -> None:
    from transformers import AutoModel, AutoProcessor

    from libra_cli.images import load_image

    cur, prior = load_image(CXR / "current.jpg"), load_image(CXR / "prior.jpg")
    expert = ZeroShotExpert(str(tiny_siglip), "cpu")
    both = expert.predict([cur, prior])
    assert [list(x) for x in both] == [MEDSIGLIP_ORDER] * 2
    assert both[0]["Lateral"] == 1 - both[0]["Frontal"]
    assert expert.predict([prior])[0] == pytest.approx(both[1], abs=1e-6)  # batched == single
    # U:85-125 written out for one label: softmax over the (with, with no) prompt pair
    model, proc = AutoModel.from_pretrained(tiny_siglip), AutoProcessor.from_pretrained(tiny_siglip)
    inputs = proc(text=["a chest X-ray with pleural effusion", "a chest X-ray with no pleural effusion"], images=[cur],
                  padding="max_length", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.squeeze(0)
    assert both[0]["Pleural Effusion"] == pytest.approx(torch.softmax(logits, 0)[0].item(), abs=1e-6)
