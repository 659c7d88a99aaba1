"""``evaluate_reports`` / ``compare_reports``: the Python API behind ``libra eval`` and training validation."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from libra_cli.errors import InputError
from libra_cli.metrics import lexical
from libra_cli.metrics.stats import SampleScores, bootstrap_ci, paired_bootstrap
from libra_cli.metrics.text import prepare

# group name -> reported metric names (names and order as the original's results / CSV)
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "bleu": ("BLEU1", "BLEU2", "BLEU3", "BLEU4"),
    "meteor": ("METEOR",),
    "rouge": ("ROUGE-L",),
    "bertscore": ("Bert_score",),
    "temporal": ("Temporal_entity_score",),
    "radgraph": ("RG_E", "RG_ER", "RG_ER_bar"),
    "chexbert": ("CheXbert_F1", "CheXbert_F1_14"),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "lexical": ("bleu", "meteor", "rouge", "temporal"),
    "original": ("bleu", "meteor", "rouge", "bertscore", "temporal"),
    "all": tuple(METRIC_GROUPS),
    "rougel": ("rouge",),
    "rouge-l": ("rouge",),
    "bert": ("bertscore",),
    "bert_score": ("bertscore",),
    "temporal_f1": ("temporal",),
    "rg_er": ("radgraph",),
    "f1radgraph": ("radgraph",),
}
DEFAULT_METRICS: tuple[str, ...] = ALIASES["lexical"]
ORDER: tuple[str, ...] = tuple(name for names in METRIC_GROUPS.values() for name in names)
# metrics whose corpus value is not a mean over pairs: no per-sample value, no resampling
_CORPUS_ONLY = {"CheXbert_F1", "CheXbert_F1_14"}


def parse_metrics(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Normalise ``"bleu,meteor"`` / ``["lexical", "bertscore"]`` to group names, in canonical order."""
    if spec is None:
        return DEFAULT_METRICS
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    groups: set[str] = set()
    for item in items:
        if item in METRIC_GROUPS:
            groups.add(item)
        elif item in ALIASES:
            groups.update(ALIASES[item])
        else:
            known = ", ".join([*METRIC_GROUPS, "lexical", "original", "all"])
            raise InputError(f"unknown metric {item!r}; choose from {known}")
    if not groups:
        raise InputError("no metric selected; e.g. --metrics lexical")
    return tuple(g for g in METRIC_GROUPS if g in groups)


def metric_versions(groups: Iterable[str] = tuple(METRIC_GROUPS)) -> dict[str, str]:
    """Versions of the packages whose code defines the numbers (recorded with every result)."""
    from importlib.metadata import PackageNotFoundError, version

    from libra_cli import __version__

    packages = {"numpy": "numpy"}
    needs = {
        "bleu": ["sacrebleu"], "meteor": ["nltk"], "rouge": ["rouge-score"], "bertscore": ["bert-score", "transformers", "torch"],
        "radgraph": ["radgraph"], "chexbert": ["f1chexbert"], "temporal": [],
    }
    for g in groups:
        for pkg in needs.get(g, []):
            packages[pkg] = pkg
    out = {"libra-cli": __version__}
    for pkg in sorted(packages):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _score(
    refs: Sequence[str], preds: Sequence[str], groups: Sequence[str], rouge_seed: int | None, model_options: dict[str, Any],
    meteor: lexical.Meteor | None,
) -> tuple[dict[str, float], SampleScores]:
    """Raw (0..1) corpus values plus the per-pair material for resampling."""
    n = len(refs)
    values: dict[str, float] = {}
    samples = SampleScores(n=n)
    for group in groups:
        if group == "bleu":
            stats = lexical.bleu_stats(refs, preds)
            for order, value in lexical.corpus_bleu(stats).items():
                values[f"BLEU{order}"] = value
            samples.bleu, samples.bleu_names = stats, list(METRIC_GROUPS["bleu"])
        elif group == "meteor":
            per = np.array(lexical.meteor_scores(refs, preds, meteor), dtype=np.float64)
            values["METEOR"] = float(np.mean(per))
            samples.means["METEOR"] = per
        elif group == "rouge":
            per = np.array([lexical.rouge_l(r, p)[2] for r, p in zip(refs, preds, strict=False)], dtype=np.float64)
            values["ROUGE-L"] = float(np.mean(per)) if rouge_seed is None else lexical.rouge_bootstrap_median(per, rouge_seed)
            samples.means["ROUGE-L"] = per
        elif group == "temporal":
            per = np.array(lexical.temporal_f1_score(refs, preds)["scores"], dtype=np.float64)
            values["Temporal_entity_score"] = float(np.mean(per))
            samples.means["Temporal_entity_score"] = per
        elif group == "bertscore":
            from libra_cli.metrics.model_based import bertscore_f1

            per = np.array(
                bertscore_f1(refs, preds, model=model_options.get("bertscore_model"), device=model_options.get("device"),
                             batch_size=model_options.get("batch_size", 64)),
                dtype=np.float64,
            )
            values["Bert_score"] = float(np.mean(per))
            samples.means["Bert_score"] = per
        elif group == "radgraph":
            from libra_cli.metrics.model_based import radgraph_scores

            means, per_pair = radgraph_scores(refs, preds, model_type=model_options.get("radgraph_model"))
            values.update(means)
            for name, vals in per_pair.items():
                samples.means[name] = np.asarray(vals, dtype=np.float64)
        elif group == "chexbert":
            from libra_cli.metrics.model_based import chexbert_f1

            values.update(chexbert_f1(refs, preds, device=model_options.get("device") or "cpu"))
    return values, samples


def _pct(x: float) -> float:
    return round(x * 100, 2)


def evaluate_reports(
    references: Sequence[str],
    predictions: Sequence[str],
    metrics: str | Iterable[str] | None = None,
    *,
    clean: bool = True,
    rouge_bootstrap: bool = False,
    seed: int = 0,
    bootstrap: int = 0,
    per_sample: bool = False,
    ids: Sequence[str] | None = None,
    bertscore_model: str | None = None,
    radgraph_model: str | None = None,
    device: str | None = None,
    batch_size: int = 64,
    meteor: lexical.Meteor | None = None,
) -> dict[str, Any]:
    """Score predictions against references with the published Libra metrics.

    Returns ``{"scores": {name: x100 rounded to 2}, "raw": {name: 0..1}, "n", "metrics", "settings",
    "versions"}``, plus ``"ci"`` (``bootstrap`` > 0 resamples, 95%) and ``"per_sample"`` on request.
    ROUGE-L is the deterministic mean of per-pair F; ``rouge_bootstrap=True`` gives evaluate's
    bootstrap median under ``np.random.seed(seed)``. Pass a reused ``meteor`` to keep its caches
    (and WordNet) across calls, e.g. in training validation.
    """
    return _evaluate(
        references, predictions, metrics, clean=clean, rouge_bootstrap=rouge_bootstrap, seed=seed, bootstrap=bootstrap,
        per_sample=per_sample, ids=ids, bertscore_model=bertscore_model, radgraph_model=radgraph_model, device=device,
        batch_size=batch_size, meteor=meteor,
    )[0]


def _evaluate(
    references: Sequence[str], predictions: Sequence[str], metrics: str | Iterable[str] | None, *, clean: bool,
    rouge_bootstrap: bool, seed: int, bootstrap: int, per_sample: bool, ids: Sequence[str] | None,
    bertscore_model: str | None, radgraph_model: str | None, device: str | None, batch_size: int,
    meteor: lexical.Meteor | None,
) -> tuple[dict[str, Any], SampleScores]:
    """evaluate_reports' body; also returns the per-pair material (compare_reports resamples it)."""
    if len(references) != len(predictions):
        raise InputError(f"{len(references)} references but {len(predictions)} predictions; give one prediction per reference")
    if len(references) == 0:
        raise InputError("nothing to evaluate: no reference/prediction pairs")
    groups = parse_metrics(metrics)
    t0 = time.perf_counter()
    refs = [prepare(str(t), clean) for t in references]
    preds = [prepare(str(t), clean) for t in predictions]
    options = {"bertscore_model": bertscore_model, "radgraph_model": radgraph_model, "device": device, "batch_size": batch_size}
    raw, samples = _score(refs, preds, groups, seed if rouge_bootstrap else None, options, meteor)
    names = [n for n in ORDER if n in raw]
    result: dict[str, Any] = {
        "scores": {n: _pct(raw[n]) for n in names},
        "raw": {n: raw[n] for n in names},
        "n": len(refs),
        "metrics": list(groups),
        "settings": {
            "clean": clean,
            "rouge_l": f"bootstrap median, seed {seed}" if rouge_bootstrap else "mean of per-pair F",
            "bootstrap": bootstrap,
            "seed": seed,
        },
        "versions": metric_versions(groups),
        "seconds": time.perf_counter() - t0,
    }
    if bootstrap > 0:
        ci = bootstrap_ci(samples, n_samples=bootstrap, seed=seed)
        result["ci"] = {n: [_pct(lo), _pct(hi)] for n, (lo, hi) in ci.items()}
    if per_sample:
        result["per_sample"] = _per_sample(refs, preds, samples, ids)
    return result, samples


def _per_sample(refs: Sequence[str], preds: Sequence[str], samples: SampleScores, ids: Sequence[str] | None) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(refs)):
        row: dict[str, Any] = {"question_id": ids[i] if ids is not None else i, "reference": refs[i], "prediction": preds[i]}
        for name, values in samples.means.items():
            row[name] = float(values[i])
        if samples.bleu is not None:  # corpus BLEU has no per-pair value; give its statistics
            row["bleu_matches"] = samples.bleu.matches[i].tolist()
            row["bleu_ngrams"] = samples.bleu.possible[i].tolist()
            row["hyp_len"], row["ref_len"] = int(samples.bleu.hyp_len[i]), int(samples.bleu.ref_len[i])
        rows.append(row)
    return rows


def compare_reports(
    references: Sequence[str],
    predictions_a: Sequence[str],
    predictions_b: Sequence[str],
    metrics: str | Iterable[str] | None = None,
    *,
    clean: bool = True,
    n_samples: int = 1000,
    seed: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Score two systems on the same references and test B - A with a paired bootstrap.

    Returns ``{"a": result, "b": result, "test": {metric: {"delta", "p_value", "ci_low", "ci_high"}}}``
    (deltas x100). Corpus-only metrics (CheXbert) get no test.
    """
    if len(predictions_a) != len(predictions_b):
        raise InputError("the two prediction sets differ in length; both must cover the same references")
    meteor = options.pop("meteor", None)
    groups = parse_metrics(metrics)
    if "meteor" in groups and meteor is None:
        meteor = lexical.Meteor()
    settings: dict[str, Any] = {
        "clean": clean, "rouge_bootstrap": False, "seed": seed, "bootstrap": 0, "per_sample": False, "ids": None,
        "bertscore_model": None, "radgraph_model": None, "device": None, "batch_size": 64, "meteor": meteor,
    }
    unknown = set(options) - set(settings)
    if unknown:
        raise TypeError(f"compare_reports() got unexpected options {sorted(unknown)}")
    settings.update(options)
    a, sa = _evaluate(references, predictions_a, groups, **settings)
    b, sb = _evaluate(references, predictions_b, groups, **settings)
    observed = {n: b["raw"][n] - a["raw"][n] for n in sa.names()}
    test = paired_bootstrap(sa, sb, observed, n_samples=n_samples, seed=seed)
    return {
        "a": a,
        "b": b,
        "test": {
            n: {"delta": _pct(t["delta"]), "p_value": t["p_value"], "ci_low": _pct(t["ci_low"]), "ci_high": _pct(t["ci_high"])}
            for n, t in test.items() if n not in _CORPUS_ONLY
        },
        "n_samples": n_samples,
    }
