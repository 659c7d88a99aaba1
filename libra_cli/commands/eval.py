"""``libra eval``: score generated reports against references (thin layer over ``libra_cli.metrics``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from libra_cli.errors import InputError


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)


def eval_cmd(
    references: Annotated[Path, typer.Argument(help="References JSONL/JSON/CSV (question_id + reference/findings/impression/text), or one file holding both.")],
    predictions: Annotated[Path | None, typer.Argument(help="Predictions JSONL/JSON/CSV (question_id + text). Omit when REFERENCES holds both.")] = None,
    metrics: Annotated[str, typer.Option("--metrics", "-m", help="Comma list: bleu, meteor, rouge, temporal, bertscore, radgraph, chexbert; or lexical (default), original (+bertscore), all.")] = "lexical",
    no_clean: Annotated[bool, typer.Option("--no-clean", help="Score the texts as given (default: lowercase + the original clean_text).")] = False,
    rouge_bootstrap: Annotated[bool, typer.Option("--rouge-bootstrap", help="ROUGE-L as HF evaluate: bootstrap median under --seed (default: deterministic mean).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --rouge-bootstrap, --bootstrap and --compare.")] = 0,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Resamples for 95% confidence intervals (0 = none).", min=0)] = 0,
    compare: Annotated[Path | None, typer.Option("--compare", help="Second predictions file: paired bootstrap test of it (B) against PREDICTIONS (A).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result (scores, raw values, CIs, settings, versions) as JSON.")] = False,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Append a row to this CSV (the original script's columns).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="'Model Name' for the CSV row (default: the predictions file name).")] = None,
    per_sample: Annotated[Path | None, typer.Option("--per-sample", help="Write per-pair scores to this JSONL.")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Score only ids present in both files instead of failing.")] = False,
    bertscore_model: Annotated[str | None, typer.Option("--bertscore-model", help="Local folder (or hub id) of the BERTScore model; default distilbert-base-uncased.")] = None,
    radgraph_model: Annotated[str | None, typer.Option("--radgraph-model", help="RadGraph model_type (default: the radgraph package's).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Device for model-based metrics (cpu, cuda).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for model-based metrics.", min=1)] = 64,
) -> None:
    """Score reports with BLEU-1..4, METEOR, ROUGE-L, temporal F1 (+ BERTScore, RadGraph, CheXbert)."""
    from libra_cli.metrics import api
    from libra_cli.metrics.records import align_for_compare, append_results_csv, load_pairs

    if compare is not None and predictions is None:
        raise InputError("--compare needs two prediction files: libra eval REFS PREDS_A --compare PREDS_B")
    if name is not None and csv_path is None:
        raise InputError("--name labels the CSV row; add --csv results.csv")
    groups = api.parse_metrics(metrics)
    options: dict[str, Any] = {
        "bertscore_model": bertscore_model, "radgraph_model": radgraph_model, "device": device, "batch_size": batch_size,
    }
    pairs = load_pairs(references, predictions, allow_missing=allow_missing)
    model_name = name or (predictions.stem if predictions else references.stem)

    if compare is not None:
        assert predictions is not None
        pairs, pairs_b = align_for_compare(pairs, load_pairs(references, compare, allow_missing=allow_missing),
                                           predictions.name, compare.name, allow_missing)
        result = api.compare_reports(
            pairs.references, pairs.predictions, pairs_b.predictions, groups, clean=not no_clean,
            n_samples=bootstrap or 1000, seed=seed, **options,
        )
        result["files"] = {"references": str(references), "a": str(predictions), "b": str(compare)}
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            _render_compare(result, predictions.name, compare.name)
        if csv_path is not None:
            append_results_csv(csv_path, predictions.stem, result["a"]["scores"])
            append_results_csv(csv_path, compare.stem, result["b"]["scores"])
        return

    result = api.evaluate_reports(
        pairs.references, pairs.predictions, groups, clean=not no_clean, rouge_bootstrap=rouge_bootstrap, seed=seed,
        bootstrap=bootstrap, per_sample=per_sample is not None, ids=pairs.ids, **options,
    )
    if per_sample is not None:
        rows = result.pop("per_sample")
        per_sample.parent.mkdir(parents=True, exist_ok=True)
        with per_sample.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    result["files"] = {"references": str(references), "predictions": str(predictions) if predictions else None}
    if csv_path is not None:
        append_results_csv(csv_path, model_name, result["scores"])
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _render(result, model_name)


def _versions_line(versions: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _render(result: dict[str, Any], model_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ci = result.get("ci")
    table = Table(title=f"{model_name}: {result['n']} pairs", title_justify="left")
    table.add_column("Metric")
    table.add_column("Score", justify="right")
    if ci:
        table.add_column("95% CI", justify="right")
    for metric, score in result["scores"].items():
        cells = [metric, f"{score:.2f}"]
        if ci:
            lo_hi = ci.get(metric)
            cells.append(f"{lo_hi[0]:.2f} – {lo_hi[1]:.2f}" if lo_hi else "")
        table.add_row(*cells)
    console.print(table)
    s = result["settings"]
    console.print(
        f"[dim]{result['n']} pairs in {result['seconds']:.2f} s ({result['n'] / max(result['seconds'], 1e-9):,.0f} pairs/s); "
        f"cleaning {'on' if s['clean'] else 'off'}; ROUGE-L {s['rouge_l']}; {_versions_line(result['versions'])}[/]",
        highlight=False,
    )


def _render_compare(result: dict[str, Any], name_a: str, name_b: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    console.print(f"[dim]{_versions_line(a['versions'])}[/]", highlight=False)
