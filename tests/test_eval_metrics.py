"""Lexical metrics equal independent computations (sacrebleu / rouge_score / nltk) to 1e-9.

The corpus is MIMIC-like (``___`` blanks, newlines, hyphens, numbering, unicode, empty and
unrelated predictions) from ``tests.builders.reports``; the references below are computed
the way HF evaluate did, one library call per metric.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from libra_cli.metrics import lexical
from libra_cli.metrics.api import evaluate_reports
from libra_cli.metrics.text import clean_text, prepare
from tests.builders.reports import make_pairs

TOL = 1e-9


def original_clean_text(text: str) -> str:
    """The original Libra ``clean_text``, verbatim regex sequence."""
    text = re.sub(r"\n+", " ", text)
    text = re.sub(r"[_-]+", " ", text)
    text = re.sub(r"\(___, __, __\)", "", text)
    text = re.sub(r"---, ---, ---", "", text)
    text = re.sub(r"\(__, __, ___\)", "", text)
    text = re.sub(r"[_-]+", " ", text)
    text = re.sub(r"[^\w\s.,:;()\-]", "", text)
    text = re.sub(r"\s{2,}", " ", text).strip()
    return text


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    refs, preds = make_pairs(300, seed=7)
    # hand-written MIMIC noise on top of the generator's
    refs += ["1. ET tube 5 cm above carina.\n2. ___ NG tube in stomach.", "Heart size normal.", "", "No change."]
    preds += ["", "heart-size normal ...", "new effusion", "NO CHANGE!!  (___, __, __) – stable…"]
    return refs, preds


@pytest.fixture(scope="module", params=[True, False], ids=["clean", "no-clean"])
def prepared(request: pytest.FixtureRequest, corpus: tuple[list[str], list[str]]) -> tuple[list[str], list[str]]:
    refs, preds = corpus
    return [prepare(r, request.param) for r in refs], [prepare(p, request.param) for p in preds]


def test_clean_text_matches_original(corpus: tuple[list[str], list[str]]) -> None:
    for text in corpus[0] + corpus[1]:
        assert clean_text(text.lower()) == original_clean_text(text.lower())
    assert clean_text("a\n\nb__c--d (___, __, __) µ° e\tf") == "a b c d ( , , ) µ e\tf"
    assert clean_text(clean_text("x -- y ___ z")) == clean_text("x -- y ___ z")


def test_bleu_equals_sacrebleu(prepared: tuple[list[str], list[str]]) -> None:
    from sacrebleu.metrics import BLEU

    refs, preds = prepared
    ours = lexical.corpus_bleu(lexical.bleu_stats(refs, preds))
    for order in (1, 2, 3, 4):
        ref = BLEU(max_ngram_order=order, smooth_method="none", tokenize="13a", force=True).corpus_score(preds, [refs])
        assert abs(ours[order] - ref.score / 100) < TOL, order


def test_bleu_edge_cases() -> None:
    assert lexical.corpus_bleu(lexical.bleu_stats(["a b c"], [""])) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    # a 3-token prediction has no 4-grams: BLEU-4 is 0, lower orders are not
    scores = lexical.corpus_bleu(lexical.bleu_stats(["a b c"], ["a b c"]))
    assert scores[3] == pytest.approx(1.0) and scores[4] == 0.0
    # brevity penalty exp(1 - r/c)
    assert lexical.corpus_bleu(lexical.bleu_stats(["a b c d"], ["a b"]))[1] == pytest.approx(np.exp(1 - 2))


def test_rouge_l_equals_rouge_score(prepared: tuple[list[str], list[str]]) -> None:
    from rouge_score import rouge_scorer

    refs, preds = prepared
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    theirs = [scorer.score(r, p)["rougeL"] for r, p in zip(refs, preds, strict=True)]
    ours = [lexical.rouge_l(r, p) for r, p in zip(refs, preds, strict=True)]
    for o, t in zip(ours, theirs, strict=True):
        assert abs(o[0] - t.precision) < TOL and abs(o[1] - t.recall) < TOL and abs(o[2] - t.fmeasure) < TOL
    mean = evaluate_reports(refs, preds, "rouge", clean=False)["raw"]["ROUGE-L"]
    assert abs(mean - np.mean([t.fmeasure for t in theirs])) < TOL


def test_lcs_is_exact_on_random_sequences() -> None:
    from rouge_score.rouge_scorer import _lcs_table

    rng = np.random.default_rng(0)
    for _ in range(300):
        a = rng.integers(0, 5, size=rng.integers(0, 70)).tolist()
        b = rng.integers(0, 5, size=rng.integers(0, 70)).tolist()
        expected = _lcs_table(a, b)[-1][-1] if a and b else 0
        assert lexical.lcs_length(a, b) == expected


def test_rouge_bootstrap_reproduces_evaluate(corpus: tuple[list[str], list[str]]) -> None:
    """evaluate: np.random.seed(s), then BootstrapAggregator over rouge1, rouge2, rougeL, rougeLsum."""
    from rouge_score import rouge_scorer, scoring

    refs = [prepare(r) for r in corpus[0][:150]]
    preds = [prepare(p) for p in corpus[1][:150]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    for seed in (0, 42):
        agg = scoring.BootstrapAggregator()
        for r, p in zip(refs, preds, strict=True):
            agg.add_scores(scorer.score(r, p))
        np.random.seed(seed)
        expected = agg.aggregate()["rougeL"].mid.fmeasure
        got = evaluate_reports(refs, preds, "rouge", clean=False, rouge_bootstrap=True, seed=seed)["raw"]["ROUGE-L"]
        assert abs(got - expected) < TOL, seed


@pytest.fixture(scope="module")
def nltk_reference() -> tuple[object, object]:
    from libra_cli.metrics.nltk_data import find_installed

    if None in find_installed().values():
        pytest.fail("NLTK data missing: run `python -m libra_cli.metrics.nltk_data` (scripts/install.sh does)")
    from nltk import word_tokenize
    from nltk.translate.meteor_score import single_meteor_score

    return word_tokenize, single_meteor_score


def test_word_tokenize_identical(nltk_reference: tuple, corpus: tuple[list[str], list[str]]) -> None:
    word_tokenize, _ = nltk_reference
    m = lexical.Meteor()
    texts = corpus[0] + corpus[1]
    for text in texts + [prepare(t) for t in texts] + ['He said "no" (it\'s 1.5 cm)... can\'t; a--b', "1. 2. 3."]:
        assert m.tokenize(text) == word_tokenize(text)


def test_meteor_equals_nltk(nltk_reference: tuple, prepared: tuple[list[str], list[str]]) -> None:
    """HF evaluate's meteor: mean of single_meteor_score(word_tokenize(ref), word_tokenize(pred))."""
    word_tokenize, single_meteor_score = nltk_reference
    refs, preds = prepared
    theirs = [single_meteor_score(word_tokenize(r), word_tokenize(p)) for r, p in zip(refs, preds, strict=True)]
    ours = lexical.meteor_scores(refs, preds)
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) < TOL
    assert abs(evaluate_reports(refs, preds, "meteor", clean=False)["raw"]["METEOR"] - float(np.mean(theirs))) < TOL


def test_fast_wordnet_loader_equals_nltk(nltk_reference: tuple) -> None:
    from nltk.corpus import wordnet

    fast = lexical.load_wordnet()
    for word in ["effusion", "opacities", "better", "worse", "lungs", "clear", "stable", "enlarged", "size", "abc123"]:
        assert fast.synsets(word) == wordnet.synsets(word)
    assert fast._lemma_pos_offset_map == wordnet._lemma_pos_offset_map
    assert fast._exception_map == wordnet._exception_map


# ----------------------------------------------------------------- temporal entity F1


def independent_temporal_f1(refs: list[str], preds: list[str]) -> float:
    eps = 1e-10
    scores = []
    for r, p in zip(refs, preds, strict=True):
        rs = {k for k in lexical.TEMPORAL_KEYWORDS if re.search(r"\b" + k + r"\b", clean_text(r))}
        ps = {k for k in lexical.TEMPORAL_KEYWORDS if re.search(r"\b" + k + r"\b", clean_text(p))}
        if not rs:
            scores.append(1.0 if not ps else eps)
            continue
        tp = len(rs & ps)
        prec = (tp + eps) / (len(ps) + eps)
        rec = (tp + eps) / (len(rs) + eps)
        scores.append(2 * prec * rec / (prec + rec + eps))
    return float(np.mean(scores))


def test_temporal_f1_equals_independent(prepared: tuple[list[str], list[str]]) -> None:
    refs, preds = prepared
    got = evaluate_reports(refs, preds, "temporal", clean=False)["raw"]["Temporal_entity_score"]
    assert abs(got - independent_temporal_f1(refs, preds)) < TOL


def test_temporal_f1_readme_example() -> None:
    preds = ["The pleural effusion has progressively worsened since previous scan.",
             "The pleural effusion is noted again on the current scan."]
    refs = ["Compare with prior scan, pleural effusion has worsened.", "Pleural effusion has worsened."]
    out = lexical.temporal_f1_score([prepare(r) for r in refs], [prepare(p) for p in preds])
    assert out["f1"] == pytest.approx(0.500000000075, abs=1e-15)
    assert out["prediction_entities"] == [{"worsened"}, set()]
    assert out["reference_entities"] == [{"worsened"}, {"worsened"}]


@pytest.mark.parametrize(
    ("ref", "pred", "expected"),
    [
        ("no keywords here", "", 1.0),  # both sets empty
        ("no keywords here", "stable", 1e-10),  # empty reference, non-empty prediction: epsilon
        ("stable", "", 2 * 1.0 * (1e-10 / (1 + 1e-10)) / (1.0 + 1e-10 / (1 + 1e-10) + 1e-10)),  # P = eps/eps = 1
        ("stable", "stable", 2 / (2 + 1e-10)),
        ("stable new", "stable", 2 * 1 * ((1 + 1e-10) / (2 + 1e-10)) / (1 + (1 + 1e-10) / (2 + 1e-10) + 1e-10)),
        ("progressively renewed unchangedly", "", 1.0),  # whole words only
        ("stable, unchanged.", "UNCHANGED (stable)", 2 / (2 + 1e-10)),  # punctuation is a boundary
        ("new_line", "new", 1e-10),  # underscore is a word character in \b... but cleaning turns _ into space
    ],
)
def test_temporal_f1_edge_cases(ref: str, pred: str, expected: float) -> None:
    got = lexical.temporal_f1_score([prepare(ref)], [prepare(pred)])["f1"]
    if ref == "new_line":  # cleaned to "new line": {"new"} vs {"new"}
        expected = 2 / (2 + 1e-10)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_temporal_without_cleaning_still_cleans_inside() -> None:
    # the original metric re-applies clean_text; with --no-clean "worse-ning" still splits at the hyphen
    assert lexical.temporal_entities("worse-ning") == {"worse"}


# ----------------------------------------------------------------- API shape


def test_evaluate_reports_shape_and_rounding(corpus: tuple[list[str], list[str]]) -> None:
    refs, preds = corpus
    out = evaluate_reports(refs, preds, "bleu,rouge,temporal")
    assert list(out["scores"]) == ["BLEU1", "BLEU2", "BLEU3", "BLEU4", "ROUGE-L", "Temporal_entity_score"]
    for name, value in out["scores"].items():
        assert value == round(out["raw"][name] * 100, 2)
    assert out["n"] == len(refs)
    assert out["versions"]["sacrebleu"] and out["versions"]["rouge-score"] and out["versions"]["libra-cli"]


def test_evaluate_reports_rejects_bad_input() -> None:
    from libra_cli.errors import InputError

    with pytest.raises(InputError, match="2 references but 1 predictions"):
        evaluate_reports(["a", "b"], ["a"])
    with pytest.raises(InputError, match="nothing to evaluate"):
        evaluate_reports([], [])
    with pytest.raises(InputError, match="unknown metric 'blue'"):
        evaluate_reports(["a"], ["a"], "blue")


def test_meteor_in_forked_workers_equals_one_process() -> None:
    from libra_cli.metrics import lexical
    from tests.builders.reports import make_pairs

    refs, preds = make_pairs(120, seed=3)
    m = lexical.Meteor()
    assert lexical.meteor_scores(refs, preds, m, workers=2) == lexical.meteor_scores(refs, preds, m, workers=1)
