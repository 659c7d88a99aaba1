"""Decode-loop speed paths give the same tokens: shared-prefix beam search, static cache + compile (issue 15)."""

from __future__ import annotations

import json

import pytest
import torch

from libra_cli.checkpoint import load_model
from libra_cli.generation import GenerationSettings, Sample, generate, prepare_batch
from libra_cli.model import shared_prefix
from tests.conftest import CXR, FIXTURES


@pytest.fixture(scope="module")
def loaded():
    return load_model(str(FIXTURES / "tiny-libra-tac"), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())


def _samples() -> list[Sample]:
    # different prompt lengths -> left padding inside the batch
    return [Sample(CXR / "current.jpg", CXR / "prior.jpg", query="Describe the chest radiograph in detail, please."),
            Sample(CXR / "prior.jpg", CXR / "current.jpg")]


def test_shared_prefix_beam_equals_transformers_beam(loaded, monkeypatch) -> None:
    st = GenerationSettings(max_new_tokens=12, num_beams=3, num_return_sequences=2, length_penalty=2.0)
    shared = generate(loaded, _samples(), st)
    monkeypatch.setattr(loaded, "shared_prefix", False)  # --no-shared-prefix (LIBRA_SHARED_PREFIX=0)
    plain = generate(loaded, _samples(), st)
    for a, b in zip(shared, plain, strict=True):
        assert [c.token_ids for c in a.candidates] == [c.token_ids for c in b.candidates]
        assert [c.score for c in a.candidates] == pytest.approx([c.score for c in b.candidates], abs=1e-5)


def test_shared_prefix_holds_the_prompt_once_per_sample(loaded) -> None:
    b = prepare_batch(loaded, _samples())
    m = loaded.model
    with torch.inference_mode():
        emb = m.embed_multimodal(b.input_ids, m.get_image_features(b.pixel_values))
        cache = shared_prefix.prefill_prefix(m, emb, b.attention_mask)
    assert cache.prefix_keys[0].shape[0] == 2  # batch, not batch x beams
    assert cache.get_seq_length() == b.input_ids.shape[1] - 1
    assert cache.prefix_mask.sum(1).tolist() == (b.attention_mask[:, :-1].sum(1)).tolist()


def test_compiled_static_cache_decode_is_exact_and_one_graph(loaded, expected, monkeypatch) -> None:
    """``--compile`` path with dynamo's eager backend (traces the step without generating code, fast on CPU)."""
    import torch._dynamo

    monkeypatch.setattr(loaded, "compile_backend", "eager")  # LIBRA_COMPILE_BACKEND=eager
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    loaded.compile = True
    try:
        st = GenerationSettings(max_new_tokens=24)
        r = generate(loaded, [Sample(CXR / "current.jpg", CXR / "prior.jpg")], st)[0]
        assert r.token_ids == expected["greedy"]["sequences"][0]["new_token_ids"]
        short = GenerationSettings(max_new_tokens=8)
        batched = generate(loaded, _samples(), short)
        single = [generate(loaded, [s], short)[0] for s in _samples()]
        assert [x.token_ids for x in batched] == [x.token_ids for x in single]
        assert not torch._dynamo.utils.counters["graph_break"]  # no host sync / Python branch in the step
    finally:
        loaded.compile = False
        torch._dynamo.reset()


@pytest.mark.parametrize("shared", [True, False])
def test_beam_scores_without_output_scores_are_bit_identical(loaded, monkeypatch, shared) -> None:
    """Candidate scores from per-step top-k equal transformers' ``sequences_scores`` (its output_scores path)."""
    from libra_cli import beam_scores

    monkeypatch.setattr(loaded, "shared_prefix", shared)
    st = GenerationSettings(max_new_tokens=16, num_beams=4, num_return_sequences=3, length_penalty=2.0)
    ours = generate(loaded, _samples(), st)
    calls = []

    def no_recorder(kw, num_beams):  # the path before: output_scores=True, transformers' sequences_scores
        calls.append(num_beams)
        return None

    monkeypatch.setattr(beam_scores, "attach", no_recorder)
    ref = generate(loaded, _samples(), st)
    assert calls == [4]
    for a, b in zip(ours, ref, strict=True):
        assert [c.token_ids for c in a.candidates] == [c.token_ids for c in b.candidates]
        assert [c.score for c in a.candidates] == [c.score for c in b.candidates]  # exact, not approx
        assert all(c.score is not None for c in a.candidates)


def test_beam_score_recorder_keeps_k_per_row_not_the_vocabulary(loaded) -> None:
    from libra_cli import beam_scores

    kw: dict = {}
    rec = beam_scores.attach(kw, 10)
    scores = torch.randn(20, 32000).log_softmax(-1)
    assert torch.equal(kw["logits_processor"][-1](torch.zeros(20, 3, dtype=torch.long), scores), scores)
    assert rec.values[0].shape == (20, 28)  # 2 x beams + 8, not 32,000
