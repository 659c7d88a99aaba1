"""One function per model-based (or ReXrank) metric group: texts in, :class:`GroupOutput` out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from libra_cli.metrics.scoring import GroupOutput, Scorers

# RadCliQ-v1 (CXR-Report-Metric ``CXRMetric/radcliq-v1.pkl`` at 9c9ecad): a StandardScaler over the
# columns (radgraph_combined, bertscore, semb_score, bleu_score) and linear coefficients + intercept.
RADCLIQ_V1_MEAN = np.array([0.5379231241355762, 0.6175725628125001, 0.7647942121140658, 0.44738335396242174])
RADCLIQ_V1_SCALE = np.array([0.3028258411486429, 0.22430938459304575, 0.2539439110169773, 0.2989271671041838])
RADCLIQ_V1_COEFS = np.array([-0.37708368261038905, -0.37030009974480316, -0.25261621789593225, 4.315048405024756e-12,
                             2.466552561323256e-10])


def radcliq_v1(radgraph: np.ndarray, bertscore: np.ndarray, semb: np.ndarray, bleu2: np.ndarray) -> np.ndarray:
    """Per-pair RadCliQ-v1: ``CompositeMetric.predict`` (scaler.transform, then [x, 1] @ coefs)."""
    x = np.column_stack([radgraph, bertscore, semb, bleu2])
    z = (x - RADCLIQ_V1_MEAN) / RADCLIQ_V1_SCALE
    return np.concatenate([z, np.ones((z.shape[0], 1))], axis=1) @ RADCLIQ_V1_COEFS


def _rexrank_tokens(text: str) -> list[str]:
    """CXR-Report-Metric ``prep_reports``: lowercase, '.' -> ' .', split on single spaces, drop empties."""
    return [t for t in str(text).lower().replace(".", " .").split(" ") if t != ""]


def bleu2_rexrank(refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    """ReXrank's BLEU (CXR-Report-Metric ``add_bleu_col``): per-report BLEU-2 with NLTK's smoothing
    method 1, which is what ``fast_bleu.BLEU(..., {"bigram": (1/2, 1/2)})`` computes."""
    import warnings

    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    smooth = SmoothingFunction().method1
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r, h in zip(refs, hyps, strict=True):
            out.append(float(sentence_bleu([_rexrank_tokens(r)], _rexrank_tokens(h), weights=(0.5, 0.5),
                                           smoothing_function=smooth)))
    return np.array(out, dtype=np.float64)


def _mean(name: str, per: np.ndarray) -> GroupOutput:
    return GroupOutput(values={name: float(per.mean())}, per_pair={name: per})


def radgraph_group(s: Scorers, refs: Sequence[str], hyps: Sequence[str]) -> GroupOutput:
    from libra_cli.metrics.radgraph import rewards

    model_type = s.options.radgraph_model
    ann = s.radgraph_annotations(model_type, list(hyps) + list(refs))
    n = len(refs)
    per = np.array([rewards(ann[i], ann[n + i]) for i in range(n)], dtype=np.float64).reshape(n, 3)
    out = GroupOutput()
    for k, name in enumerate(("RG_E", "RG_ER", "RG_ER_bar")):
        out.values[name] = float(per[:, k].mean())
        out.per_pair[name] = per[:, k]
    out.notes.append(f"RadGraph model type: {model_type}")
    return out


def radgraph_combined(s: Scorers, refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    from libra_cli.metrics.radgraph import combined

    ann = s.radgraph_annotations("radgraph", list(hyps) + list(refs))
    n = len(refs)
    return np.array([combined(ann[i], ann[n + i]) for i in range(n)], dtype=np.float64)


def chexbert_group(s: Scorers, refs: Sequence[str], hyps: Sequence[str]) -> GroupOutput:
    from libra_cli.metrics import chexbert as cx

    labels = s.chexbert_labels(list(refs) + list(hyps))
    n = len(refs)
    ref_l, hyp_l = labels[:n], labels[n:]
    cr, cr5 = cx.classification_reports(ref_l, hyp_l)
    out = GroupOutput()
    counts14 = cx.pair_counts(ref_l, hyp_l)
    counts5 = counts14[:, cx.INDEX_5, :]
    for suffix, report, counts in (("", cr5, counts5), ("_14", cr, counts14)):
        out.values[f"CheXbert_F1{suffix}"] = float(report["micro avg"]["f1-score"])
        out.values[f"CheXbert_F1{suffix}_macro"] = float(report["macro avg"]["f1-score"])
        out.values[f"CheXbert_F1{suffix}_weighted"] = float(report["weighted avg"]["f1-score"])
        out.values[f"CheXbert_F1{suffix}_ex"] = float(report["samples avg"]["f1-score"])
        flat = counts.reshape(n, -1)
        k = counts.shape[1]
        out.corpus[f"CheXbert_F1{suffix}"] = (flat, _counts_fn(k, "micro"))
        out.corpus[f"CheXbert_F1{suffix}_macro"] = (flat, _counts_fn(k, "macro"))
        out.corpus[f"CheXbert_F1{suffix}_weighted"] = (flat, _counts_fn(k, "weighted"))
        ex = cx.example_f1(ref_l, hyp_l) if suffix else cx.example_f1(ref_l[:, cx.INDEX_5], hyp_l[:, cx.INDEX_5])
        out.per_pair[f"CheXbert_F1{suffix}_ex"] = ex
    return out


def _counts_fn(k: int, kind: str) -> Callable[[np.ndarray], np.ndarray]:
    from libra_cli.metrics.chexbert import f1_from_counts

    def fn(sums: np.ndarray) -> np.ndarray:
        return f1_from_counts(sums.reshape(sums.shape[0], k, 3), kind)

    return fn


def semb(s: Scorers, refs: Sequence[str], hyps: Sequence[str]) -> np.ndarray:
    from libra_cli.metrics.chexbert import semb_scores

    ref_vecs, hyp_vecs = s.semb_vectors(refs, hyps)
    return semb_scores(ref_vecs.astype(np.float64), hyp_vecs.astype(np.float64))


def ratescore_group(s: Scorers, refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str]) -> GroupOutput:
    per, bad = s.ratescore(refs, hyps)
    out = _mean("RaTEScore", per)
    if bad:
        shown = ", ".join(repr(ids[i]) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        out.notes.append(f"RaTEScore: {len(bad)} pair(s) have a report with no sentence ({shown}); scored 0.5, "
                         "the package's value for a report without entities")
    return out


def radcliq_group(s: Scorers, refs: Sequence[str], hyps: Sequence[str], shared: dict[str, np.ndarray]) -> GroupOutput:
    """RadCliQ-v1 per pair from the four ReXrank columns (computed once, shared with those metrics)."""
    cols = {
        "RadGraph": lambda: radgraph_combined(s, refs, hyps),
        "BERTScore": lambda: s.bertscore("rexrank", refs, hyps),
        "SembScore": lambda: semb(s, refs, hyps),
        "BLEU2_rexrank": lambda: bleu2_rexrank(refs, hyps),
    }
    for name, fn in cols.items():
        if name not in shared:
            shared[name] = fn()
    per = radcliq_v1(shared["RadGraph"], shared["BERTScore"], shared["SembScore"], shared["BLEU2_rexrank"])
    out = GroupOutput(values={"RadCliQ-v1": float(per.mean()), "1/RadCliQ-v1": float(1 / per.mean())},
                      per_pair={"RadCliQ-v1": per})
    # 1 / (weighted mean): weighted sums of [value, 1] per resample
    out.corpus["1/RadCliQ-v1"] = (np.column_stack([per, np.ones_like(per)]), lambda sums: sums[:, 1] / sums[:, 0])
    return out


# groups scored on the raw texts, as the leaderboard / package defines them (the Libra table's
# metrics see the original's lowercase + clean_text)
RAW_TEXT_GROUPS = frozenset({"bleu2_rexrank", "bertscore_rexrank", "semb", "radgraph_combined", "radcliq", "chexbert",
                             "ratescore", "green", "crimson"})
MODEL_GROUPS = ("bertscore", "ratescore", "radgraph", "bertscore_rexrank", "semb", "radgraph_combined", "radcliq",
                "chexbert", "green", "crimson")


def run_group(group: str, s: Scorers, refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str],
              shared: dict[str, np.ndarray]) -> GroupOutput:
    """Score one model-based (or ReXrank) group; ``shared`` carries per-pair columns RadCliQ reuses."""
    if group == "bertscore":
        return _mean("Bert_score", s.bertscore("original", refs, hyps))
    if group == "bleu2_rexrank":
        shared["BLEU2_rexrank"] = bleu2_rexrank(refs, hyps)
        return _mean("BLEU2_rexrank", shared["BLEU2_rexrank"])
    if group == "bertscore_rexrank":
        shared["BERTScore"] = s.bertscore("rexrank", refs, hyps)
        return _mean("BERTScore", shared["BERTScore"])
    if group == "semb":
        shared["SembScore"] = semb(s, refs, hyps)
        return _mean("SembScore", shared["SembScore"])
    if group == "radgraph_combined":
        shared["RadGraph"] = radgraph_combined(s, refs, hyps)
        return _mean("RadGraph", shared["RadGraph"])
    if group == "radgraph":
        return radgraph_group(s, refs, hyps)
    if group == "chexbert":
        return chexbert_group(s, refs, hyps)
    if group == "ratescore":
        return ratescore_group(s, refs, hyps, ids)
    if group == "radcliq":
        return radcliq_group(s, refs, hyps, shared)
    if group in ("green", "crimson"):  # LLM judges (libra_cli.metrics.judges)
        from libra_cli.metrics.judges.group import judge_group

        return judge_group(group, s, refs, hyps, ids)
    raise ValueError(group)
