"""How results are shown and named: the summary table, ReXrank's row, RadEval's key names."""

from __future__ import annotations

from typing import Any

from libra_cli.metrics.registry import LOWER_IS_BETTER, NOT_PERCENT

# ReXrank's results CSV columns (raw values, 3 decimals there; full precision here)
REXRANK_KEYS: dict[str, str] = {
    "BLEU2_rexrank": "BLEU", "BERTScore": "BertScore", "SembScore": "SembScore", "RadGraph": "RadGraph",
    "RadCliQ-v1": "RadCliQ-v1", "1/RadCliQ-v1": "1/RadCliQ-v1", "RaTEScore": "RaTEScore", "GREEN": "GREEN",
}
# RadEval's result keys (its adapters' ``metric_keys``)
RADEVAL_KEYS: dict[str, str] = {
    "BLEU4": "bleu", "ROUGE-L": "rougeL", "Bert_score": "bertscore", "RG_E": "radgraph_simple",
    "RG_ER": "radgraph_partial", "RG_ER_bar": "radgraph_complete", "RaTEScore": "ratescore", "1/RadCliQ-v1": "radcliq_v1",
    "CheXbert_F1": "f1chexbert_5_micro_f1", "CheXbert_F1_14": "f1chexbert_all_micro_f1",
    "CheXbert_F1_macro": "f1chexbert_5_macro_f1", "CheXbert_F1_14_macro": "f1chexbert_all_macro_f1",
    "CheXbert_F1_weighted": "f1chexbert_5_weighted_f1", "CheXbert_F1_14_weighted": "f1chexbert_all_weighted_f1",
    "Temporal_entity_score": "temporal_f1", "GREEN": "green", "METEOR": "meteor",
}


def to_format(result: dict[str, Any], fmt: str) -> dict[str, float]:
    """The result's scores under ``fmt``'s names: libra (x100, 2 decimals), rexrank / radeval (raw 0..1)."""
    if fmt == "libra":
        return dict(result["scores"])
    keys = REXRANK_KEYS if fmt == "rexrank" else RADEVAL_KEYS
    return {keys[name]: value for name, value in result["raw"].items() if name in keys}


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False)


def render(result: dict[str, Any], model_name: str, fmt: str = "libra") -> None:
    """The summary table (+ CIs, per-metric seconds), then what was skipped and the versions."""
    from rich.table import Table

    console = _console()
    ci = result.get("ci")
    table = Table(title=f"{model_name}: {result['n']} pairs", title_justify="left")
    table.add_column("Metric")
    table.add_column("Score", justify="right")
    if ci:
        table.add_column("95% CI", justify="right")
    if fmt != "libra":
        table.add_column(f"{fmt} key")
    keys = REXRANK_KEYS if fmt == "rexrank" else RADEVAL_KEYS
    for metric, score in result["scores"].items():
        label = metric + (" (lower is better)" if metric in LOWER_IS_BETTER else "")
        cells = [label, f"{score:.4f}" if metric in NOT_PERCENT else f"{score:.2f}"]
        if ci:
            lo_hi = ci.get(metric)
            cells.append(f"{lo_hi[0]:.2f} – {lo_hi[1]:.2f}" if lo_hi else "")
        if fmt != "libra":
            cells.append(keys.get(metric, ""))
        table.add_row(*cells)
    console.print(table)
    timings = ", ".join(f"{g} {s:.1f}s" for g, s in result.get("timings", {}).items())
    s = result["settings"]
    from libra_cli.metrics.groups import RAW_TEXT_GROUPS

    computed = result.get("metrics", [])
    extra = f"; cleaning {'on' if s['clean'] else 'off'}" if any(g not in RAW_TEXT_GROUPS for g in computed) else ""
    if "rouge" in computed:
        extra += f"; ROUGE-L {s['rouge_l']}"
    console.print(
        f"[dim]{result['n']} pairs in {result['seconds']:.2f} s ({_rate(result['n'], result['seconds'])}; "
        f"{timings}){extra}[/]", highlight=False)
    from rich.markup import escape

    for note in result.get("notes", []):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    for group, reason in result.get("skipped", {}).items():
        console.print(f"[yellow]skipped {group}:[/] {escape(reason)}", highlight=False)
    console.print(f"[dim]{_versions_line(result['versions'])}[/]", highlight=False)


def _rate(n: int, seconds: float) -> str:
    """Pairs per second with the digits that matter (a real-size RaTEScore run is well under one)."""
    rate = n / max(seconds, 1e-9)
    return f"{rate:,.0f} pairs/s" if rate >= 10 else f"{rate:.2g} pairs/s" if rate >= 0.1 else f"{seconds / max(n, 1):.1f} s/pair"


def _versions_line(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def render_compare(result: dict[str, Any], name_a: str, name_b: str) -> None:
    from rich.table import Table

    console = _console()
    a, b, test = result["a"], result["b"], result["test"]
    table = Table(title=f"A = {name_a}, B = {name_b}: {a['n']} pairs, paired bootstrap ({result['n_samples']} resamples)",
                  title_justify="left")
    for col, just in (("Metric", "left"), ("A", "right"), ("B", "right"), ("B - A", "right"), ("95% CI", "right"), ("p", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for metric in a["scores"]:
        t = test.get(metric)
        if t is None:
            table.add_row(metric, f"{a['scores'][metric]:.2f}", f"{b['scores'][metric]:.2f}", "", "", "")
            continue
        style = "bold" if t["p_value"] < 0.05 else ""
        table.add_row(
            metric, f"{a['scores'][metric]:.2f}", f"{b['scores'][metric]:.2f}", f"{t['delta']:+.2f}",
            f"{t['ci_low']:+.2f} – {t['ci_high']:+.2f}", f"{t['p_value']:.4f}", style=style,
        )
    console.print(table)
    from rich.markup import escape

    for group, reason in a.get("skipped", {}).items():
        console.print(f"[yellow]skipped {group}:[/] {escape(reason)}", highlight=False)
    console.print(f"[dim]{_versions_line(a['versions'])}[/]", highlight=False)


def render_download(plans: list[Any], console: Any) -> None:
    """Table of scorer-model repositories: cached (commit) or fetched (files, MB)."""
    from rich.table import Table

    table = Table(title="Scorer models (Hugging Face cache)", title_justify="left")
    for col in ("Model", "Repository", "Commit", "Status"):
        table.add_column(col)
    for p in plans:
        status = "cached" if p.cached else (f"fetched {len(p.files)} files, {p.bytes / 1e6:,.1f} MB" if p.files else "missing")
        table.add_row(p.model, p.repo.repo_id, (p.commit or "")[:12], status)
    console.print(table)
