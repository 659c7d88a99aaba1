"""``evaluate_reports`` / ``compare_reports``: the Python API behind ``libra eval`` and training validation.

Only what the chosen metrics need is imported: lexical metrics import sacrebleu / nltk pieces on
use, model metrics import their package when they run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from libra_cli.errors import InputError
from libra_cli.metrics.registry import (
    LABELS,
    LEXICAL,
    METRIC_GROUPS,
    NOT_PERCENT,
    ORDER,
    SUITES,
    parse_metrics,
    scorer_model_keys,
)
from libra_cli.metrics.stats import SampleScores, bootstrap_ci, paired_bootstrap
from libra_cli.metrics.text import prepare

__all__ = ["evaluate_reports", "compare_reports", "parse_metrics", "metric_versions", "METRIC_GROUPS", "SUITES"]


def metric_versions(groups: Iterable[str] = tuple(METRIC_GROUPS)) -> dict[str, str]:
    """Versions of the packages whose code defines the numbers (recorded with every result)."""
    from importlib.metadata import PackageNotFoundError, version

    from libra_cli import __version__
    from libra_cli.metrics.scoring import versions_for

    groups = list(groups)
    needs = {"bleu": ["sacrebleu"], "meteor": ["nltk"], "rouge": ["rouge-score"], "bleu2_rexrank": ["nltk"]}
    out = {"libra-cli": __version__}
    for pkg in sorted({"numpy", *(p for g in groups for p in needs.get(g, []))}):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    out.update(versions_for(groups))
    return out


def _lexical(group: str, refs: Sequence[str], preds: Sequence[str], rouge_seed: int | None, meteor: Any,
             values: dict[str, float], samples: SampleScores, workers: int | None = None) -> None:
    """The original's lexical metrics (exact, fast; ``libra_cli.metrics.lexical``)."""
    from libra_cli.metrics import lexical

    if group == "bleu":
        stats = lexical.bleu_stats(refs, preds)
        for order, value in lexical.corpus_bleu(stats).items():
            values[f"BLEU{order}"] = value
        samples.bleu, samples.bleu_names = stats, list(METRIC_GROUPS["bleu"])
    elif group == "meteor":
        per = np.array(lexical.meteor_scores(refs, preds, meteor, workers), dtype=np.float64)
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


def _pct(name: str, x: float) -> float:
    return round(x, 4) if name in NOT_PERCENT else round(x * 100, 2)


def _has_cuda() -> bool:
    """A CUDA GPU, checked without importing torch where no NVIDIA driver is loaded at all."""
    import os

    if not os.path.exists("/proc/driver/nvidia/version") and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _preflight(groups: Sequence[str], explicit: set[str], strict: bool, scorers: Any,
               radgraph_model: str) -> tuple[list[str], dict[str, str]]:
    """Check packages, GPU and local models for every model group before anything loads (fast, offline).

    A group that came from ``--suite`` and cannot run is skipped with its reason (``strict``: error);
    one named in ``--metrics`` is an error. An LLM judge from a suite is skipped without a GPU (its own engine,
    ``--judge-engine openai``, excepted); named in ``--metrics`` it runs on the CPU.
    """
    from libra_cli.metrics.groups import MODEL_GROUPS
    from libra_cli.metrics.scoring import require_package

    packages = {"bertscore": ["bert_score"], "bertscore_rexrank": ["bert_score"], "radgraph": ["radgraph"],
                "radgraph_combined": ["radgraph"], "semb": ["f1chexbert"], "chexbert": ["f1chexbert"],
                "ratescore": ["RaTEScore", "medspacy"], "radcliq": ["radgraph", "bert_score", "f1chexbert"]}
    keep: list[str] = []
    skipped: dict[str, str] = {}
    needs = scorer_model_keys(groups, radgraph_model)
    for group in groups:
        if group not in MODEL_GROUPS:
            keep.append(group)
            continue
        try:
            if group in ("green", "crimson"):  # LLM judges: model, engine and URL checked, nothing loaded
                from libra_cli.metrics.judges.run import JudgeOptions, check

                options = scorers.options.judge or JudgeOptions()
                if group not in explicit and options.engine != "openai" and not _has_cuda():
                    skipped[group] = (f"{LABELS[group]} is an LLM judge and no CUDA GPU is here; name it in --metrics "
                                      "to run it on the CPU anyway, or use --judge-engine openai --judge-url URL")
                    continue
                try:
                    check(group, options, scorers.options.hub_cache)
                except InputError as exc:
                    raise InputError(f"{LABELS[group]}: {exc}") from None
                keep.append(group)
                continue
            for module in packages[group]:
                require_package(module, LABELS.get(group, group))
            for key in needs[group]:
                try:
                    scorers.resolved(key)
                except InputError as exc:
                    raise InputError(f"{LABELS.get(group, group)}: {exc}") from None
        except InputError as exc:
            if group in explicit or strict:
                raise
            skipped[group] = str(exc)
            continue
        keep.append(group)
    return keep, skipped


def evaluate_reports(
    references: Sequence[str],
    predictions: Sequence[str],
    metrics: str | Iterable[str] | None = None,
    *,
    suite: str | None = None,
    strict: bool = False,
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
    workers: int | None = None,
    cache: bool | Path = True,
    model_paths: dict[str, Path] | None = None,
    scorers: Any = None,
    meteor: Any = None,
    judge: Any = None,
) -> dict[str, Any]:
    """Score predictions against references: the Libra table, ReXrank's metrics, F1CheXbert.

    Returns ``{"scores": {name: x100 rounded (RadCliQ raw)}, "raw", "n", "metrics", "skipped",
    "notes", "timings", "settings", "versions", "models"}``, plus ``"ci"`` (``bootstrap`` > 0) and
    ``"per_sample"``. ``suite`` (libra | rexrank | chexbert) adds its metrics; a suite metric whose
    model is not downloaded is skipped and listed (``strict=True``: an error). Pass ``scorers``
    (:func:`make_scorers`) and ``meteor`` to keep models and WordNet loaded across calls (training).
    """
    return _evaluate(references, predictions, metrics, suite=suite, strict=strict, clean=clean,
                     rouge_bootstrap=rouge_bootstrap, seed=seed, bootstrap=bootstrap, per_sample=per_sample, ids=ids,
                     scorers=scorers or make_scorers(bertscore_model=bertscore_model, radgraph_model=radgraph_model,
                                                     device=device, batch_size=batch_size, workers=workers,
                                                     cache=cache, model_paths=model_paths, judge=judge),
                     meteor=meteor)[0]


def make_scorers(*, bertscore_model: str | None = None, radgraph_model: str | None = None, device: str | None = None,
                 batch_size: int = 64, workers: int | None = None, cache: bool | Path = True,
                 model_paths: dict[str, Path] | None = None, judge: Any = None) -> Any:
    """Scorer models for one or more evaluations (each loads on first use, once); ``judge``: a
    :class:`~libra_cli.metrics.judges.run.JudgeOptions` for GREEN / CRIMSON (engine, URL, model, dtype)."""
    from libra_cli.metrics.models import libra_cache_dir
    from libra_cli.metrics.radgraph import DEFAULT_MODEL_TYPE, MODEL_TYPES
    from libra_cli.metrics.scoring import ModelOptions, Scorers

    rg = (radgraph_model or DEFAULT_MODEL_TYPE).lower()
    if rg not in MODEL_TYPES:
        raise InputError(f"unknown RadGraph model {radgraph_model!r}; choose from {', '.join(MODEL_TYPES)}")
    overrides = dict(model_paths or {})
    if bertscore_model:
        folder = Path(bertscore_model).expanduser()
        if not (folder / "config.json").is_file():
            raise InputError(f"--bertscore-model {bertscore_model}: not a model folder with config.json; give a local copy "
                             "of distilbert-base-uncased")
        overrides["distilbert-base-uncased"] = folder
    cache_path = None if cache is False else (cache if isinstance(cache, Path) else libra_cache_dir() / "eval-outputs.sqlite")
    return Scorers(ModelOptions(device=device, batch_size=batch_size, radgraph_model=rg, workers=workers,
                                cache_path=cache_path, overrides=overrides, judge=judge))


def _evaluate(
    references: Sequence[str], predictions: Sequence[str], metrics: str | Iterable[str] | None, *, suite: str | None,
    strict: bool, clean: bool, rouge_bootstrap: bool, seed: int, bootstrap: int, per_sample: bool,
    ids: Sequence[str] | None, scorers: Any, meteor: Any,
) -> tuple[dict[str, Any], SampleScores]:
    """evaluate_reports' body; also returns the per-pair material (compare_reports resamples it)."""
    from libra_cli.metrics.groups import RAW_TEXT_GROUPS, run_group

    if len(references) != len(predictions):
        raise InputError(f"{len(references)} references but {len(predictions)} predictions; give one prediction per reference")
    if len(references) == 0:
        raise InputError("nothing to evaluate: no reference/prediction pairs")
    requested = parse_metrics(metrics, suite)
    explicit = set(parse_metrics(metrics)) if metrics is not None else set()
    groups, skipped = _preflight(requested, explicit, strict, scorers, scorers.options.radgraph_model)
    if not groups:
        what = f"--suite {suite}" if suite else "the selected metrics"
        reasons = "; ".join(dict.fromkeys(skipped.values()))
        raise InputError(f"{what} scored nothing: {reasons}")
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(references))]
    t0 = time.perf_counter()
    raw_refs = [str(t) for t in references]
    raw_preds = [str(t) for t in predictions]
    refs = [prepare(t, clean) for t in raw_refs]
    preds = [prepare(t, clean) for t in raw_preds]
    if "meteor" in groups and meteor is None:
        from libra_cli.metrics.lexical import Meteor

        meteor = Meteor()
    values: dict[str, float] = {}
    samples = SampleScores(n=len(refs))
    timings: dict[str, float] = {}
    notes: list[str] = []
    shared: dict[str, np.ndarray] = {}
    for group in groups:
        g0 = time.perf_counter()
        if group in LEXICAL and group != "bleu2_rexrank":
            _lexical(group, refs, preds, seed if rouge_bootstrap else None, meteor, values, samples,
                     scorers.options.workers)
        else:
            r, p = (raw_refs, raw_preds) if group in RAW_TEXT_GROUPS else (refs, preds)
            out = run_group(group, scorers, r, p, ids, shared)
            values.update(out.values)
            samples.means.update(out.per_pair)
            samples.corpus.update(out.corpus)
            notes.extend(out.notes)
        timings[group] = time.perf_counter() - g0
    names = [n for n in ORDER if n in values]
    result: dict[str, Any] = {
        "scores": {n: _pct(n, values[n]) for n in names},
        "raw": {n: values[n] for n in names},
        "n": len(refs),
        "metrics": list(groups),
        "skipped": skipped,
        "notes": notes,
        "timings": timings,
        "settings": {
            "suite": suite, "clean": clean,
            "rouge_l": f"bootstrap median, seed {seed}" if rouge_bootstrap else "mean of per-pair F",
            "bootstrap": bootstrap, "seed": seed, "radgraph_model": scorers.options.radgraph_model,
            "device": scorers.options.device,
        },
        "versions": metric_versions(groups),
        "models": scorers.commits(),
        "seconds": time.perf_counter() - t0,
    }
    if bootstrap > 0:
        ci = bootstrap_ci(samples, n_samples=bootstrap, seed=seed)
        result["ci"] = {n: [_pct(n, lo), _pct(n, hi)] for n, (lo, hi) in ci.items()}
    if per_sample:
        result["per_sample"] = _per_sample(ids, raw_refs, raw_preds, samples)
    return result, samples


def _per_sample(ids: Sequence[str], refs: Sequence[str], preds: Sequence[str], samples: SampleScores) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(refs)):
        row: dict[str, Any] = {"question_id": ids[i], "reference": refs[i], "prediction": preds[i]}
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
    suite: str | None = None,
    strict: bool = False,
    clean: bool = True,
    n_samples: int = 1000,
    seed: int = 0,
    scorers: Any = None,
    meteor: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Score two systems on the same references and test B - A with a paired bootstrap (every metric).

    Returns ``{"a": result, "b": result, "test": {metric: {"delta", "p_value", "ci_low", "ci_high"}}}``
    (deltas x100 except RadCliQ). Scorer models load once for both systems.
    """
    if len(predictions_a) != len(predictions_b):
        raise InputError("the two prediction sets differ in length; both must cover the same references")
    allowed = {"bertscore_model", "radgraph_model", "device", "batch_size", "workers", "cache", "model_paths", "judge", "ids",
               "per_sample", "bootstrap", "rouge_bootstrap"}
    unknown = set(options) - allowed
    if unknown:
        raise TypeError(f"compare_reports() got unexpected options {sorted(unknown)}")
    ids = options.pop("ids", None)
    for ignored in ("per_sample", "bootstrap", "rouge_bootstrap"):
        options.pop(ignored, None)
    scorers = scorers or make_scorers(**options)
    if meteor is None and "meteor" in parse_metrics(metrics, suite):
        from libra_cli.metrics.lexical import Meteor

        meteor = Meteor()
    common = {"suite": suite, "strict": strict, "clean": clean, "rouge_bootstrap": False, "seed": seed, "bootstrap": 0,
              "per_sample": False, "ids": ids, "scorers": scorers, "meteor": meteor}
    a, sa = _evaluate(references, predictions_a, metrics, **common)
    b, sb = _evaluate(references, predictions_b, metrics, **common)
    observed = {n: b["raw"][n] - a["raw"][n] for n in sa.names()}
    test = paired_bootstrap(sa, sb, observed, n_samples=n_samples, seed=seed)
    return {
        "a": a,
        "b": b,
        "test": {
            n: {"delta": _pct(n, t["delta"]), "p_value": t["p_value"], "ci_low": _pct(n, t["ci_low"]),
                "ci_high": _pct(n, t["ci_high"])}
            for n, t in test.items()
        },
        "n_samples": n_samples,
    }


def check_selection(metrics: str | Iterable[str] | None, best: str | None = None, *, radgraph_model: str | None = None,
                    scorers: Any = None) -> Any:
    """Validate a metric selection before a long job (training): names, ``best`` among its outputs, and
    every scorer package and model present locally (no network, nothing loaded). Returns the scorers."""
    from libra_cli.metrics.registry import LOWER_IS_BETTER  # noqa: F401 - re-exported for callers deciding direction

    groups = parse_metrics(metrics)
    names = [n for g in groups for n in METRIC_GROUPS[g]]
    if best is not None and best.lower() not in ("loss", "eval_loss") and best not in names:
        raise InputError(f"metric_for_best_model {best!r} is not produced by eval_metrics {metrics!r} "
                         f"(they give {', '.join(names)}); change one of them")
    scorers = scorers or make_scorers(radgraph_model=radgraph_model)
    _preflight(groups, set(groups), True, scorers, scorers.options.radgraph_model)
    return scorers
