"""Report-generation metrics: the published Libra numbers (BLEU-1..4, METEOR, ROUGE-L, BERTScore,
temporal entity F1, RadGraph, CheXbert), exact, offline for the lexical ones, and fast.

Public API (imported lazily so ``import libra_cli.metrics`` stays cheap)::

    from libra_cli.metrics import evaluate_reports, compare_reports, load_pairs
    evaluate_reports(refs, preds)                       # lexical metrics, x100 rounded
    evaluate_reports(refs, preds, metrics="original")   # + BERTScore, as the original script
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "evaluate_reports": "libra_cli.metrics.api",
    "compare_reports": "libra_cli.metrics.api",
    "parse_metrics": "libra_cli.metrics.api",
    "metric_versions": "libra_cli.metrics.api",
    "METRIC_GROUPS": "libra_cli.metrics.api",
    "load_pairs": "libra_cli.metrics.records",
    "Pairs": "libra_cli.metrics.records",
    "clean_text": "libra_cli.metrics.text",
    "prepare": "libra_cli.metrics.text",
    "temporal_f1_score": "libra_cli.metrics.lexical",
    "Meteor": "libra_cli.metrics.lexical",
    "bleu_stats": "libra_cli.metrics.lexical",
    "corpus_bleu": "libra_cli.metrics.lexical",
    "rouge_l": "libra_cli.metrics.lexical",
    "provision_nltk_data": "libra_cli.metrics.nltk_data",
}
_RENAMED = {"provision_nltk_data": "provision"}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'libra_cli.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(module), _RENAMED.get(name, name))
