"""Model-based metric groups: each scorer model loads once per run and feeds every metric that needs it.

RadGraph annotations feed RG_E/RG_ER/RG_ER_bar, ReXrank's RadGraph and RadCliQ-v1; one CheXbert
model gives F1CheXbert labels (per report) and SembScore vectors (in CXR-Report-Metric's batches);
ReXrank's BERTScore also feeds RadCliQ-v1. Outputs are cached per report text (per pair for
BERTScore, per batch of 18 for SembScore), so re-scoring changed predictions only runs the models
on the changed lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from libra_cli.console import quiet_transformers
from libra_cli.errors import InputError
from libra_cli.metrics.cache import OutputCache, text_key
from libra_cli.metrics.models import SCORER_MODELS, ResolvedModel, resolve


def _pkg_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


INSTALL_HINT = "pip install 'libra-cli[metrics-model]' (see docs/eval.md for RaTEScore's install steps)"


def require_package(module: str, what: str) -> None:
    """A one-line error when a scorer package is not installed (checked before any model loads)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        hint = "pip install --no-deps medspacy==1.3.1 PyRuSH==1.0.13 (see docs/eval.md)" if module == "medspacy" else INSTALL_HINT
        raise InputError(f"{what} needs the `{module}` package, which is not installed; run: {hint}")


@dataclass
class ModelOptions:
    """How scorer models run: device, batch size, RadGraph model type, threads, cache, local overrides."""

    device: str | None = None  # None: cuda when present, decided when the first model loads (torch imports late)
    batch_size: int = 64
    radgraph_model: str = "radgraph-xl"
    workers: int | None = None
    cache_path: Path | None = None
    overrides: dict[str, Path] = field(default_factory=dict)  # hub repo id -> local folder
    hub_cache: Path | None = None
    judge: Any = None  # libra_cli.metrics.judges.run.JudgeOptions (None: transformers, the judge's default model)
    # called before a scorer model loads with (model key, its weight paths); raises when it cannot fit in memory
    memory_guard: Callable[[str, list[Path]], None] | None = None


@dataclass
class GroupOutput:
    """What one metric group produced: corpus values, per-pair values, corpus-statistic material, notes."""

    values: dict[str, float] = field(default_factory=dict)
    per_pair: dict[str, np.ndarray] = field(default_factory=dict)
    corpus: dict[str, tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Scorers:
    """Scorer models of one run, loaded on first use and shared between metric groups."""

    def __init__(self, options: ModelOptions) -> None:
        self.options = options
        self.cache = OutputCache(options.cache_path)
        self._resolved: dict[str, ResolvedModel] = {}
        self._loaded: dict[str, Any] = {}
        self.load_seconds: dict[str, float] = {}
        self._threads_set = False
        self.judge_runs: dict[str, Any] = {}  # group -> JudgeRun (responses, stats) of the last run

    @property
    def device(self) -> str:
        """The scorer device; importing torch to find a GPU waits until a model actually loads."""
        if self.options.device is None:
            import torch

            self.options.device = "cuda" if torch.cuda.is_available() else "cpu"
        return self.options.device

    def resolved(self, key: str) -> ResolvedModel:
        if key not in self._resolved:
            self._resolved[key] = resolve(key, self.options.hub_cache, self.options.overrides)
        return self._resolved[key]

    def commits(self) -> dict[str, dict[str, str]]:
        """Model commits of every resolved scorer model (recorded with the result)."""
        return {k: r.commits for k, r in self._resolved.items()}

    def _load(self, key: str, build: Callable[[], Any]) -> Any:
        if self.options.workers and not self._threads_set:
            import torch

            torch.set_num_threads(self.options.workers)
            self._threads_set = True
        if key not in self._loaded:
            quiet_transformers()  # no "Loading weights" bars on the console of an eval (--verbose shows them)
            if self.options.memory_guard is not None:
                self.options.memory_guard(key, self.weight_paths(key))
            t0 = time.perf_counter()
            self._loaded[key] = build()
            self.load_seconds[key] = time.perf_counter() - t0
        return self._loaded[key]

    def weight_paths(self, key: str) -> list[Path]:
        """The files and folders whose weights loading ``key`` reads (for the memory check)."""
        from libra_cli.metrics.models import RRG_SCORERS

        paths = dict(self.resolved(key).paths)
        if key == "chexbert":
            paths[RRG_SCORERS] = paths[RRG_SCORERS] / "chexbert.pth"
        elif "radgraph" in paths:
            paths.pop(RRG_SCORERS, None)
        return list(paths.values())

    def namespace(self, key: str, *extra: str) -> str:
        r = self.resolved(key)
        return "|".join([key, *(f"{k}={v}" for k, v in sorted(r.commits.items())), *extra])

    # ----------------------------------------------------------------- RadGraph
    def radgraph_annotations(self, model_type: str, texts: Sequence[str]) -> list[dict[str, Any] | None]:
        """Per text: the package's annotation, or None for an empty / whitespace-only report."""
        from libra_cli.metrics import radgraph as rg

        require_package("radgraph", "RadGraph")
        key = f"radgraph:{model_type}"
        res = self.resolved(key)
        todo = [t for t in texts if not rg.is_empty(t)]
        ns = self.namespace(key, f"radgraph={_pkg_version('radgraph')}")

        def run(batch: list[str]) -> list[Any]:
            model = self._load(key, lambda: rg.RadGraphAnnotator(res.paths["radgraph"], model_type, self.device))
            out: list[Any] = []
            for start in range(0, len(batch), self.options.batch_size):
                out.extend(model.annotate(batch[start:start + self.options.batch_size]))
            return out

        done = dict(zip(todo, self.cache.compute(ns, [text_key(t) for t in todo], todo, run), strict=True))
        return [None if rg.is_empty(t) else done[t] for t in texts]

    # ----------------------------------------------------------------- CheXbert
    def _chexbert(self) -> Any:
        from libra_cli.metrics import chexbert as cx
        from libra_cli.metrics.models import RRG_SCORERS

        res = self.resolved("chexbert")
        return self._load("chexbert", lambda: cx.CheXbertModel(res.paths[RRG_SCORERS] / "chexbert.pth",
                                                              res.paths["bert-base-uncased"], self.device))

    def _chexbert_namespace(self, what: str) -> str:
        require_package("f1chexbert", "CheXbert")
        return self.namespace("chexbert", f"f1chexbert={_pkg_version('f1chexbert')}", what)

    def chexbert_labels(self, texts: Sequence[str]) -> np.ndarray:
        """Labels [n,14] of each text on its own (f1chexbert's way), cached per text."""
        from libra_cli.metrics import chexbert as cx

        outs = self.cache.compute(self._chexbert_namespace("labels-one-report"), [text_key(t) for t in texts], list(texts),
                                  lambda batch: self._chexbert().labels(batch).tolist())
        return np.array(outs, dtype=np.int64).reshape(len(texts), len(cx.TARGET_NAMES))

    def semb_vectors(self, refs: Sequence[str], hyps: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """SembScore's CLS vectors: each file in CXR-Report-Metric's batches (``CheXbertModel.semb_vectors``),
        cached per batch of reports, since a vector depends on the batch it was computed in."""
        from libra_cli.metrics.chexbert import SEMB_BATCH

        ns = self._chexbert_namespace(f"semb-batch={SEMB_BATCH}")
        sides = [list(refs), list(hyps)]
        chunks = [side[i:i + SEMB_BATCH] for side in sides for i in range(0, len(side), SEMB_BATCH)]

        def run(batch: list[list[str]]) -> list[Any]:
            return [self._chexbert().semb_vectors(chunk).tolist() for chunk in batch]

        outs = self.cache.compute(ns, [text_key(*c) for c in chunks], chunks, run)
        vectors = [np.array(o, dtype=np.float32) for o in outs]
        n_ref = -(-len(refs) // SEMB_BATCH)
        return np.concatenate(vectors[:n_ref]), np.concatenate(vectors[n_ref:])

    # ----------------------------------------------------------------- BERTScore
    def bertscore(self, setting: str, refs: Sequence[str], hyps: Sequence[str], num_layers: int | None = None) -> np.ndarray:
        """Per-pair BERTScore F1 for ``setting`` (``original`` or ``rexrank``)."""
        from libra_cli.metrics import bertscore as bs

        require_package("bert_score", "BERTScore")
        key = f"bertscore-{setting}"
        res = self.resolved(key)
        repo = SCORER_MODELS[key].repos[0].repo_id
        ns = self.namespace(key, f"bert-score={_pkg_version('bert-score')}", f"layers={num_layers}")

        def run(batch: list[tuple[str, str]]) -> list[float]:
            scorer = self._load(key, lambda: bs.BertScorer(setting, res.paths[repo], self.device,
                                                           self.options.batch_size, num_layers))
            return scorer.f1([r for r, _ in batch], [h for _, h in batch])

        pairs = list(zip(refs, hyps, strict=True))
        return np.array(self.cache.compute(ns, [text_key(r, h) for r, h in pairs], pairs, run), dtype=np.float64)

    # ----------------------------------------------------------------- RaTEScore
    def ratescore(self, refs: Sequence[str], hyps: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Per-pair RaTEScore and the indices of pairs with a sentence-less report."""
        from libra_cli.metrics import ratescore as rs

        require_package("RaTEScore", "RaTEScore")
        require_package("medspacy", "RaTEScore")
        res = self.resolved("ratescore")
        scorer = self._load("ratescore", lambda: rs.RaTEScorer(
            res.paths["Angelakeke/RaTE-NER-Deberta"], res.paths["FremyCompany/BioLORD-2023-C"], self.device,
            batch_size=1))
        texts = list(refs) + list(hyps)
        ns = self.namespace("ratescore", f"RaTEScore={_pkg_version('RaTEScore')}")
        ents = self.cache.compute(ns, [text_key(t) for t in texts], texts,
                                  lambda batch: [rs.to_jsonable(e) for e in scorer.entities(batch)])
        n = len(refs)
        as_tuples = [None if e is None else [tuple(x) for x in e] for e in ents]
        scores = [scorer.score_pair(as_tuples[i], as_tuples[n + i]) for i in range(n)]
        bad = [i for i in range(n) if as_tuples[i] is None or as_tuples[n + i] is None]
        return np.array(scores, dtype=np.float64), bad


def versions_for(groups: Sequence[str]) -> dict[str, str]:
    """Versions of the scorer packages behind ``groups``."""
    needs = {
        "bertscore": ["bert-score"], "bertscore_rexrank": ["bert-score"], "radgraph": ["radgraph"],
        "radgraph_combined": ["radgraph"], "chexbert": ["f1chexbert", "scikit-learn"], "semb": ["f1chexbert"],
        "ratescore": ["RaTEScore", "medspacy", "PyRuSH", "spacy"], "radcliq": ["radgraph", "bert-score", "f1chexbert"],
        "green": [], "crimson": [],  # ported (docs/eval.md); the engine's versions follow
    }
    pkgs = sorted({p for g in groups for p in needs.get(g, [])})
    out = {p: _pkg_version(p) for p in pkgs}
    if "green" in groups:
        out["GREEN"] = "Stanford-AIMI/GREEN@d72c195 (ported)"
    if "crimson" in groups:
        out["crimson-score"] = "0.2.2 (ported)"
    if pkgs or "green" in groups or "crimson" in groups:
        out["transformers"] = _pkg_version("transformers")
        out["torch"] = _pkg_version("torch")
    return out
