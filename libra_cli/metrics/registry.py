"""Which metrics exist, what they report, which suites name them and which scorer models they need.

Imports nothing heavy: ``libra eval`` parses ``--suite``/``--metrics`` before it decides what to load.
"""

from __future__ import annotations

from collections.abc import Iterable

from libra_cli.errors import InputError

# group -> reported metric names, in display order (one group = one computation)
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "bleu": ("BLEU1", "BLEU2", "BLEU3", "BLEU4"),
    "meteor": ("METEOR",),
    "rouge": ("ROUGE-L",),
    "bertscore": ("Bert_score",),
    "temporal": ("Temporal_entity_score",),
    "ratescore": ("RaTEScore",),
    "radgraph": ("RG_E", "RG_ER", "RG_ER_bar"),
    "bleu2_rexrank": ("BLEU2_rexrank",),
    "bertscore_rexrank": ("BERTScore",),
    "semb": ("SembScore",),
    "radgraph_combined": ("RadGraph",),
    "radcliq": ("RadCliQ-v1", "1/RadCliQ-v1"),
    "chexbert": ("CheXbert_F1", "CheXbert_F1_14", "CheXbert_F1_macro", "CheXbert_F1_14_macro",
                 "CheXbert_F1_weighted", "CheXbert_F1_14_weighted", "CheXbert_F1_ex", "CheXbert_F1_14_ex"),
    "green": ("GREEN",),
    "crimson": ("CRIMSON",),
}
# what error messages call each group
LABELS: dict[str, str] = {
    "bertscore": "BERTScore (original)", "bertscore_rexrank": "BERTScore (ReXrank)", "ratescore": "RaTEScore",
    "radgraph": "RadGraph F1 (RG_E/RG_ER/RG_ER_bar)", "radgraph_combined": "RadGraph F1 (ReXrank)", "semb": "SembScore",
    "radcliq": "RadCliQ-v1", "chexbert": "F1CheXbert", "green": "GREEN", "crimson": "CRIMSON",
}
JUDGE_GROUPS = ("green", "crimson")  # LLM-judged (libra_cli.metrics.judges)
LEXICAL = ("bleu", "meteor", "rouge", "temporal", "bleu2_rexrank")
SUITES: dict[str, tuple[str, ...]] = {
    # Libra's results table (BLEU1, BLEU4, METEOR, ROUGE-L, RaTEScore, RG_ER) + what libra eval reported before
    "libra": ("bleu", "meteor", "rouge", "bertscore", "temporal", "ratescore", "radgraph"),
    # ReXrank's leaderboard columns (GREEN skipped without a GPU unless named in --metrics)
    "rexrank": ("bleu2_rexrank", "bertscore_rexrank", "semb", "radgraph_combined", "ratescore", "radcliq", "green"),
    # LLaVA-Rad / CheXagent / RRG24: F1CheXbert 5 and 14 classes, micro / macro / weighted / example-based
    "chexbert": ("chexbert",),
}
ALIASES: dict[str, tuple[str, ...]] = {
    "lexical": ("bleu", "meteor", "rouge", "temporal"),
    "original": ("bleu", "meteor", "rouge", "bertscore", "temporal"),
    "all": tuple(g for g in METRIC_GROUPS if g not in ("green", "crimson")),
    "rougel": ("rouge",), "rouge-l": ("rouge",), "bert": ("bertscore",), "bert_score": ("bertscore",),
    "temporal_f1": ("temporal",), "rg_er": ("radgraph",), "f1radgraph": ("radgraph",), "rate": ("ratescore",),
    "sembscore": ("semb",), "radcliq-v1": ("radcliq",), "f1chexbert": ("chexbert",), "bleu2": ("bleu2_rexrank",),
}
DEFAULT_METRICS: tuple[str, ...] = ALIASES["lexical"]
ORDER: tuple[str, ...] = tuple(name for names in METRIC_GROUPS.values() for name in names)
# reported as x100 percentages unless listed here (RadCliQ-v1 is a regression output, lower is better)
NOT_PERCENT = frozenset({"RadCliQ-v1", "1/RadCliQ-v1"})
LOWER_IS_BETTER = frozenset({"RadCliQ-v1"})


def scorer_model_keys(groups: Iterable[str], radgraph_model: str, judge_model: str | None = None
                      ) -> dict[str, tuple[str, ...]]:
    """group -> the scorer model keys (``libra_cli.metrics.models.SCORER_MODELS``) it needs (a judge: its
    ``judge_model`` variant; none for a folder or an unlisted hub id, which the judge resolves itself)."""
    needs: dict[str, tuple[str, ...]] = {
        "bertscore": ("bertscore-original",),
        "bertscore_rexrank": ("bertscore-rexrank",),
        "radgraph": (f"radgraph:{radgraph_model}",),
        "radgraph_combined": ("radgraph:radgraph",),
        "semb": ("chexbert",),
        "chexbert": ("chexbert",),
        "ratescore": ("ratescore",),
        "radcliq": ("radgraph:radgraph", "bertscore-rexrank", "chexbert"),
    }
    groups = list(groups)
    if any(g in JUDGE_GROUPS for g in groups):
        from libra_cli.metrics.judges.run import scorer_key

        for g in JUDGE_GROUPS:
            key = scorer_key(g, judge_model)
            needs[g] = (key,) if key else ()
    return {g: needs.get(g, ()) for g in groups}


def parse_metrics(spec: str | Iterable[str] | None, suite: str | None = None) -> tuple[str, ...]:
    """``--suite`` plus ``--metrics`` (comma list of groups/aliases/suites) -> group names, canonical order."""
    items: list[str] = []
    if suite:
        if suite.lower() not in SUITES:
            raise InputError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
        items.extend(SUITES[suite.lower()])
    if spec is not None:
        items.extend(s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip())
    elif not suite:
        return DEFAULT_METRICS
    groups: set[str] = set()
    for item in items:
        if item in METRIC_GROUPS:
            groups.add(item)
        elif item in ALIASES:
            groups.update(ALIASES[item])
        elif item in SUITES:
            groups.update(SUITES[item])
        else:
            known = ", ".join([*METRIC_GROUPS, "lexical", "original", "all", *SUITES])
            raise InputError(f"unknown metric {item!r}; choose from {known}")
    if not groups:
        raise InputError("no metric selected; e.g. --metrics lexical or --suite libra")
    return tuple(g for g in METRIC_GROUPS if g in groups)
