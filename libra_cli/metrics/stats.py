"""Bootstrap confidence intervals and the paired significance test, vectorised over resamples.

Every resample is a vector of multinomial counts over the pairs, so corpus BLEU is recomputed
exactly from summed n-gram statistics and mean metrics from weighted means: no metric is re-run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from libra_cli.metrics.lexical import BleuStats

BLEU_ORDERS = {"BLEU1": 1, "BLEU2": 2, "BLEU3": 3, "BLEU4": 4}


@dataclass
class SampleScores:
    """What resampling needs: per-pair values of mean metrics, BLEU's per-pair statistics, and for
    other corpus statistics (CheXbert micro/macro F1, 1/RadCliQ-v1) per-pair count columns plus the
    function that turns weighted column sums into the metric."""

    n: int
    means: dict[str, np.ndarray] = field(default_factory=dict)
    bleu: BleuStats | None = None
    bleu_names: list[str] = field(default_factory=list)
    corpus: dict[str, tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [*self.bleu_names, *self.means, *self.corpus]


def resample_counts(n: int, n_samples: int, seed: int, chunk_elems: int = 20_000_000) -> Iterator[np.ndarray]:
    """Yield (rows, n) count matrices, ``n_samples`` rows in all: how often each pair is drawn."""
    rng = np.random.default_rng(seed)
    rows = max(1, chunk_elems // max(n, 1))
    done = 0
    while done < n_samples:
        k = min(rows, n_samples - done)
        idx = rng.integers(0, n, size=(k, n)) + (np.arange(k) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float64)
        done += k


def _bleu_rows(stats: BleuStats, w: np.ndarray, order: int) -> np.ndarray:
    """Corpus BLEU-``order`` for each weight row (same formula as ``bleu_from_totals``)."""
    m = w @ stats.matches[:, :order].astype(np.float64)
    p = w @ stats.possible[:, :order].astype(np.float64)
    h = w @ stats.hyp_len.astype(np.float64)
    r = w @ stats.ref_len.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(p > 0, m / np.where(p > 0, p, 1), 0.0)
        ok = (prec > 0).all(axis=1) & (h > 0) & (r > 0)
        logs = np.log(np.where(prec > 0, prec, 1.0)).sum(axis=1) / order
        ratio = h / np.where(r > 0, r, 1)
        bp = np.where(ratio > 1.0, 1.0, np.exp(1 - 1.0 / np.where(ratio > 0, ratio, 1)))
    return np.where(ok, np.exp(logs) * bp, 0.0)


def resampled_values(scores: SampleScores, w: np.ndarray) -> dict[str, np.ndarray]:
    """Metric values (0..1) on each resample described by the weight rows ``w``."""
    out: dict[str, np.ndarray] = {}
    for name in scores.bleu_names:
        assert scores.bleu is not None
        out[name] = _bleu_rows(scores.bleu, w, BLEU_ORDERS[name])
    total = w.sum(axis=1)
    for name, values in scores.means.items():
        out[name] = (w @ values) / total
    for name, (stats, fn) in scores.corpus.items():
        out[name] = fn(w @ stats)
    return out


def bootstrap_ci(scores: SampleScores, n_samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval (default 95%) for every metric, resampling pairs."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in scores.names()}
    for w in resample_counts(scores.n, n_samples, seed):
        for name, vals in resampled_values(scores, w).items():
            parts[name].append(vals)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for name, chunks in parts.items():
        vals = np.concatenate(chunks)
        out[name] = (float(np.percentile(vals, lo)), float(np.percentile(vals, hi)))
    return out


def _ties_to_a(a: SampleScores, b: SampleScores) -> tuple[SampleScores, set[str]]:
    """``b`` with every per-pair value that equals ``a``'s within float noise set to ``a``'s, and the metrics
    whose per-pair data are then identical (a difference of 0, whatever the rounding of their sums)."""
    same: set[str] = set()
    means = {}
    for name, vb in b.means.items():
        va = a.means[name]
        vb = np.where(np.isclose(va, vb, rtol=TIE_RTOL, atol=TIE_ATOL), va, vb)
        means[name] = vb
        if np.array_equal(va, vb):
            same.add(name)
    corpus = {}
    for name, (sb, fn) in b.corpus.items():
        sa = a.corpus[name][0]
        sb = np.where(np.isclose(sa, sb, rtol=TIE_RTOL, atol=TIE_ATOL), sa, sb)
        corpus[name] = (sb, fn)
        if np.array_equal(sa, sb):
            same.add(name)
    if a.bleu is not None and b.bleu is not None and all(
        np.array_equal(getattr(a.bleu, f), getattr(b.bleu, f)) for f in ("matches", "possible", "hyp_len", "ref_len")
    ):
        same.update(b.bleu_names)
    return SampleScores(n=b.n, means=means, bleu=b.bleu, bleu_names=b.bleu_names, corpus=corpus), same


# per-pair values this close are one value computed twice, not a difference between systems: float32 scorers
# (BERTScore, RaTEScore) batch the same text differently, and Temporal F1's epsilon terms (1e-10) move with the
# entity counts. 1e-6 is 100x below the precision of the reported numbers (two decimals of a percentage).
TIE_RTOL, TIE_ATOL = 1e-6, 1e-6


def paired_bootstrap(
    a: SampleScores, b: SampleScores, observed_delta: dict[str, float], n_samples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """Paired bootstrap test of B - A on the same pairs (sacrebleu's ``paired_bs`` p-value).

    The same resamples score both systems; p = (1 + #|d_i - mean(d)| >= |observed|) / (1 + N),
    i.e. how often a difference this large appears when the true difference is shifted to zero.
    Per-pair values equal within float noise are ties: a metric equal on every pair gives delta 0, p = 1.
    """
    assert a.n == b.n
    b, same = _ties_to_a(a, b)
    deltas: dict[str, list[np.ndarray]] = {name: [] for name in a.names() if name not in same}
    if deltas:
        for w in resample_counts(a.n, n_samples, seed):
            va, vb = resampled_values(a, w), resampled_values(b, w)
            for name in deltas:
                deltas[name].append(vb[name] - va[name])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {name: {"delta": 0.0, "p_value": 1.0, "ci_low": 0.0, "ci_high": 0.0} for name in a.names() if name in same}
    for name, chunks in deltas.items():
        d = np.concatenate(chunks)
        obs = observed_delta[name]
        centred = d - d.mean()
        p = (1 + int((np.abs(centred) >= abs(obs) * (1 - TIE_RTOL) - TIE_ATOL).sum())) / (1 + len(d))
        out[name] = {"delta": obs, "p_value": p, "ci_low": float(np.percentile(d, lo)), "ci_high": float(np.percentile(d, hi))}
    return {name: out[name] for name in a.names()}
