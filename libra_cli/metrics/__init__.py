"""Report-generation metrics: the Libra paper's table (BLEU, METEOR, ROUGE-L, RaTEScore, RG_ER, ...),
ReXrank's leaderboard metrics (BLEU-2, BERTScore, SembScore, RadGraph, RaTEScore, RadCliQ-v1, GREEN)
and F1CheXbert, each equal to the field's own package, offline after ``libra eval download``.

Public API (imported lazily so ``import libra_cli.metrics`` stays cheap)::

    from libra_cli.metrics import evaluate_reports, compare_reports, load_pairs
    evaluate_reports(refs, preds)                       # lexical metrics, x100 rounded
    evaluate_reports(refs, preds, metrics="original")   # + BERTScore, as the original script
    evaluate_reports(refs, preds, suite="rexrank")      # the leaderboard's columns
"""

from __future__ import annotations

from libra_cli.lazy import lazy_exports

_LAZY = {
    "evaluate_reports": "libra_cli.metrics.api",
    "compare_reports": "libra_cli.metrics.api",
    "make_scorers": "libra_cli.metrics.api",
    "parse_metrics": "libra_cli.metrics.registry",
    "metric_versions": "libra_cli.metrics.api",
    "METRIC_GROUPS": "libra_cli.metrics.registry",
    "SUITES": "libra_cli.metrics.registry",
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

__getattr__, __all__ = lazy_exports(__name__, _LAZY, _RENAMED)
