"""CCD decoding: the fast batched decoder against the line-by-line reference (tests/ccd_reference.py).

Greedy token ids must be IDENTICAL to the reference's full-recompute loop, for batch sizes 1 and 4,
on the shared fixture and on tiny random models, with labels from a file; sampling too, with a
seed, one study at a time; beam search (an extension) equals ordinary beam search at alpha = beta = 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from libra_cli.generation import GenerationSettings, Sample, default_query, generate, prepare_batch
from tests.ccd_reference import reference_ccd
from tests.conftest import CXR, FIXTURES

N = 12
CUR, PRIOR = str(CXR / "current.jpg"), str(CXR / "prior.jpg")
LABELS = {
    "q0": {"Atelectasis": 0.2, "Cardiomegaly": 0.7, "Consolidation": 0.1, "Edema": 0.05, "Enlarged Cardiomediastinum": 0.58,
           "Fracture": 0.01, "Lung Lesion": 0.3, "Lung Opacity": 0.91, "Pleural Effusion": 0.66, "Pneumonia": 0.4,
           "Pneumothorax": 0.02, "Pleural Other": 0.1, "Support Devices": 0.8, "Frontal": 0.95, "Lateral": 0.05},
    "q1": {"Effusion": 0.9, "Frontal": 0.3, "Lateral": 0.7},
    "q2": {"Atelectasis": 0.1},
    "q3": {"Cardiomegaly": 0.99999, "Edema": 0.5, "Frontal": 0.5, "Lateral": 0.5},
}
QUERIES = [None, "What are the findings in this chest X-ray?", "Describe the heart.", None]
PRIORS = [PRIOR, None, PRIOR, None]


def studies() -> list[Sample]:
    return [Sample(CUR, PRIORS[i], QUERIES[i], id=f"q{i}") for i in range(4)]


@pytest.fixture(scope="module")
def labels_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = tmp_path_factory.mktemp("labels") / "labels.json"
    p.write_text(json.dumps(LABELS))
    return str(p)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The shared fixture and two tiny random models (other backbones, connectors, no-prior)."""
    from libra_cli.checkpoint import load_model
    from tests.builders.tiny import make_tiny_libra

    root = tmp_path_factory.mktemp("ccd-models")
    shutil.copytree(FIXTURES / "tiny-rad-dino", root / "tiny-rad-dino")
    make_tiny_libra(root / "qwen", FIXTURES / "tokenizer", backbone="libra_qwen2", connector="mlp2x_gelu", seed=3)
    make_tiny_libra(root / "mistral", FIXTURES / "tokenizer", backbone="libra_mistral", connector="TAC", seed=5, layers=3)
    load = lambda p: load_model(str(p), device="cpu", dtype="float32")  # noqa: E731
    return {"fixture": load(FIXTURES / "tiny-libra-tac"), "qwen2-mlp": load(root / "qwen"),
            "mistral-tac": load(root / "mistral")}


@pytest.fixture(scope="module")
def eos_model() -> object:
    """The fixture with its EOS row tied to a frequent token: answers stop at different lengths."""
    from libra_cli.checkpoint import load_model

    lm = load_model(str(FIXTURES / "tiny-libra-tac"), device="cpu", dtype="float32")
    with torch.no_grad():
        w = lm.model.lm_head.weight
        w[lm.tokenizer.eos_token_id] = w[448] * 1.3
    return lm


def reference(loaded, sample: Sample, labels: dict, **kw) -> list[int]:
    pix = prepare_batch(loaded, [sample]).pixel_values
    return reference_ccd(loaded, pix, sample.query or default_query(loaded), labels, max_new_tokens=kw.pop("n", N), **kw)


def ccd(labels_file: str, **kw) -> GenerationSettings:
    return GenerationSettings(**({"max_new_tokens": N} | kw), decoding="ccd", ccd_labels=labels_file)


@pytest.mark.parametrize("name", ["fixture", "qwen2-mlp", "mistral-tac"])
def test_greedy_equals_reference_batch_4_and_1(models, labels_file, name) -> None:
    loaded = models[name]
    settings = ccd(labels_file)
    batched = generate(loaded, studies(), settings)
    for s, rep in zip(studies(), batched, strict=True):
        ref = reference(loaded, s, LABELS[s.id])
        assert rep.token_ids == ref, f"{name} {s.id}: batch of 4 differs from the reference"
        assert generate(loaded, [s], settings)[0].token_ids == ref, f"{name} {s.id}: single differs"
        assert rep.ccd["labels"] == LABELS[s.id] and rep.text == loaded.decode(ref).strip()


def test_stopping_matches_reference_and_leaves_the_batch(eos_model, labels_file) -> None:
    settings = ccd(labels_file, max_new_tokens=20)
    batched = generate(eos_model, studies(), settings)
    refs = [reference(eos_model, s, LABELS[s.id], n=20) for s in studies()]
    assert [r.token_ids for r in batched] == refs
    assert len({len(r) for r in refs}) > 1 and min(len(r) for r in refs) < 20  # stops happen, at different steps
    assert all(eos_model.tokenizer.eos_token_id not in r for r in refs)  # the stop token is not kept


def test_sampling_equals_reference_with_seed(models, labels_file) -> None:
    loaded = models["fixture"]
    for s, (temp, top_k, top_p) in zip(studies()[:2], [(0.8, None, None), (1.3, 40, 0.9)], strict=True):
        got = generate(loaded, [s], ccd(labels_file, temperature=temp, top_k=top_k, top_p=top_p, seed=11))[0]
        torch.manual_seed(11)
        assert got.token_ids == reference(loaded, s, LABELS[s.id], temperature=temp, top_k=top_k, top_p=top_p)


def test_alpha_beta_zero_is_greedy_with_trigram_blocking(models, labels_file) -> None:
    """With alpha = beta = 0 CCD is plain greedy plus the reference's always-on trigram blocking."""
    loaded = models["fixture"]
    n = 40
    got = generate(loaded, studies(), ccd(labels_file, max_new_tokens=n, ccd_alpha=0.0, ccd_beta=0.0))
    blocked = generate(loaded, studies(), GenerationSettings(max_new_tokens=n, no_repeat_ngram_size=3))
    plain = generate(loaded, studies(), GenerationSettings(max_new_tokens=n))
    assert [r.token_ids for r in got] == [r.token_ids for r in blocked]
    assert [r.token_ids for r in got] != [r.token_ids for r in plain]  # a trigram was blocked somewhere


def test_no_prefix_sharing_gives_the_same_tokens(models, labels_file, monkeypatch: pytest.MonkeyPatch) -> None:
    from libra_cli.ccd import streams

    loaded = models["fixture"]
    shared = generate(loaded, studies(), ccd(labels_file))
    monkeypatch.setattr(streams, "shared_prefix", lambda a, b, *_: 0)
    assert [r.token_ids for r in generate(loaded, studies(), ccd(labels_file))] == [r.token_ids for r in shared]


def test_repetition_penalty_is_its_own_setting(models, labels_file) -> None:
    """The reference passes length_penalty as the repetition penalty; here each does its own job."""
    loaded = models["fixture"]
    s = studies()[0]
    base = generate(loaded, [s], ccd(labels_file))[0].token_ids
    assert generate(loaded, [s], ccd(labels_file, length_penalty=3.0))[0].token_ids == base
    assert generate(loaded, [s], ccd(labels_file, repetition_penalty=1.5))[0].token_ids == \
        reference(loaded, s, LABELS[s.id], penalty=1.5)


@pytest.mark.parametrize("model", ["fixture", "eos"])
def test_beams_equal_ordinary_beam_search_at_alpha_beta_zero(models, eos_model, labels_file, model) -> None:
    loaded = models["fixture"] if model == "fixture" else eos_model
    kw = dict(max_new_tokens=16, num_beams=3, length_penalty=2.0, num_return_sequences=2)
    got = generate(loaded, studies(), ccd(labels_file, ccd_alpha=0.0, ccd_beta=0.0, **kw))
    ordinary = generate(loaded, studies(), GenerationSettings(no_repeat_ngram_size=3, **kw))
    eos = loaded.tokenizer.eos_token_id
    for g, o in zip(got, ordinary, strict=True):
        assert [c.token_ids for c in g.candidates] == [c.token_ids[:-1] if c.token_ids[-1:] == [eos] else c.token_ids
                                                       for c in o.candidates]
        assert [c.score for c in g.candidates] == pytest.approx([c.score for c in o.candidates], abs=1e-4)


def test_beams_batched_equal_single(models, labels_file) -> None:
    loaded = models["qwen2-mlp"]
    settings = ccd(labels_file, num_beams=3, length_penalty=1.0)
    batched = generate(loaded, studies(), settings)
    assert [r.token_ids for r in batched] == [generate(loaded, [s], settings)[0].token_ids for s in studies()]


def test_expert_labels_run_once_per_batch(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from libra_cli.ccd import experts
    from tests.test_ccd_labels import MEDSIGLIP_ORDER, make_tiny_siglip

    loaded = models["fixture"]
    expert = experts.get_expert(str(make_tiny_siglip(tmp_path / "siglip")), "cpu")
    calls = []
    predict = expert.predict
    monkeypatch.setattr(expert, "predict", lambda images: calls.append(len(images)) or predict(images))
    reps = generate(loaded, studies(), GenerationSettings(max_new_tokens=N, decoding="ccd", ccd_expert=str(tmp_path / "siglip")))
    assert calls == [4]
    assert all(list(r.ccd["labels"]) == MEDSIGLIP_ORDER for r in reps)
    assert reps[1].token_ids == reference(loaded, studies()[1], reps[1].ccd["labels"])


def test_settings_record(labels_file) -> None:
    std = GenerationSettings(max_new_tokens=5).to_dict()
    assert not any(k.startswith("ccd_") for k in std) and "decoding" not in std  # answers of earlier runs still resume
    d = ccd(labels_file).to_dict()
    assert d["decoding"] == "ccd" and d["no_repeat_ngram_size"] == 3 and d["ccd_gamma"] == 10.0
