"""``libra eval``: score generated reports (thin layer over ``libra_cli.metrics``); ``libra eval download``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from libra_cli.errors import InputError


class _DefaultToScore(TyperGroup):
    """``libra eval REFS PREDS`` scores; ``libra eval download`` is the one subcommand; ``libra eval --help``
    shows the scoring options (what almost every caller wants), with ``download`` named in its text."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["score", *args]
        return super().parse_args(ctx, args)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        score = self.commands["score"]
        score.format_help(score.make_context(ctx.info_name, [], parent=ctx.parent, resilient_parsing=True), formatter)


eval_app = typer.Typer(name="eval", cls=_DefaultToScore, no_args_is_help=True,
                       help="Score reports: `libra eval REFS [PREDS]`; fetch scorer models once: `libra eval download`.")


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


SUITE_HELP = "libra (the paper's table), rexrank (the leaderboard), chexbert (F1CheXbert)."
METRICS_HELP = ("Comma list of bleu, meteor, rouge, temporal, bertscore, ratescore, radgraph, bleu2_rexrank, bertscore_rexrank, "
                "semb, radgraph_combined, radcliq, chexbert, green, crimson; or lexical (default), original, all.")
JUDGE = "LLM judges (GREEN, CRIMSON; docs/eval.md)"
JUDGE_MODEL_HELP = ("Judge variant: radllama2-7b (GREEN default), radphi2, medgemma-4b-it-crimson (CRIMSON default), a hub id "
                    "or a local folder.")


@eval_app.command("score", help="Score REFS against PREDS (or one file holding both). Scorer models for the model "
                  "metrics are fetched once with `libra eval download --suite libra|rexrank|chexbert` "
                  "(`libra eval download --help`).")
def eval_cmd(
    references: Annotated[Path, typer.Argument(help="References JSONL/JSON/CSV, ReXrank JSON, or one file holding both (e.g. `libra batch` output, a ReXrank submission).")],
    predictions: Annotated[Path | None, typer.Argument(help="Predictions JSONL/JSON/CSV or ReXrank JSON {study_id: report}. Omit when REFERENCES holds both.")] = None,
    suite: Annotated[str | None, typer.Option("--suite", "-s", help=SUITE_HELP)] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", "-m", help=METRICS_HELP)] = None,
    strict: Annotated[bool, typer.Option("--strict", help="A suite metric whose model or package is missing is an error (default: skipped and listed).")] = False,
    radgraph_model: Annotated[str | None, typer.Option("--radgraph-model", help="RadGraph model for RG_E/RG_ER/RG_ER_bar: radgraph, radgraph-xl (default), modern-radgraph-xl.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="Key names of the JSON/CSV output: libra (default), rexrank (leaderboard row), radeval.")] = "libra",
    no_clean: Annotated[bool, typer.Option("--no-clean", help="Score the texts as given (default: lowercase + the original clean_text for the Libra metrics).")] = False,
    rouge_bootstrap: Annotated[bool, typer.Option("--rouge-bootstrap", help="ROUGE-L as HF evaluate: bootstrap median under --seed (default: deterministic mean).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --rouge-bootstrap, --bootstrap and --compare.")] = 0,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Resamples for 95% confidence intervals of every metric (0 = none).", min=0)] = 0,
    compare: Annotated[Path | None, typer.Option("--compare", help="Second predictions file: paired bootstrap test of it (B) against PREDICTIONS (A).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result (scores, raw values, CIs, timings, versions) as JSON on stdout.")] = False,
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Append a row to this CSV (the original script's columns).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="'Model Name' for the CSV row (default: the predictions file name).")] = None,
    per_sample: Annotated[Path | None, typer.Option("--per-sample", help="Write per-pair scores of every metric to this JSONL.")] = None,
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Score only ids present in both files instead of failing.")] = False,
    bertscore_model: Annotated[str | None, typer.Option("--bertscore-model", help="Local folder of distilbert-base-uncased for the original BERTScore (default: the HF cache).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="Device for scorer models (cpu, cuda; default: cuda when present).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for scorer models.", min=1)] = 64,
    workers: Annotated[int | None, typer.Option("--workers", help="CPU workers: METEOR processes and scorer-model threads (default: every core for large inputs).", min=1)] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the per-report scorer-output cache.")] = False,
    judge_engine: Annotated[str, typer.Option("--judge-engine", help="hf (transformers), vllm (prefix caching), openai (a server at --judge-url).", rich_help_panel=JUDGE)] = "hf",
    judge_url: Annotated[str | None, typer.Option("--judge-url", help="OpenAI-compatible server for --judge-engine openai, e.g. http://127.0.0.1:8000/v1.", rich_help_panel=JUDGE)] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help=JUDGE_MODEL_HELP, rich_help_panel=JUDGE)] = None,
    judge_dtype: Annotated[str | None, typer.Option("--judge-dtype", help="float16 | bfloat16 | float32 (default: the judge package's: GREEN float16, CRIMSON bfloat16).", rich_help_panel=JUDGE)] = None,
    judge_batch_size: Annotated[int, typer.Option("--judge-batch-size", help="Prompts per judge batch (hf); requests in flight (openai) at least 16.", min=1, rich_help_panel=JUDGE)] = 8,
) -> None:
    from libra_cli.metrics import api
    from libra_cli.metrics.formats import render, render_compare, to_format
    from libra_cli.metrics.judges.run import JudgeOptions
    from libra_cli.metrics.records import align_for_compare, append_results_csv, load_pairs, write_per_sample

    if compare is not None and predictions is None:
        raise InputError("--compare needs two prediction files: libra eval REFS PREDS_A --compare PREDS_B")
    if name is not None and csv_path is None:
        raise InputError("--name labels the CSV row; add --csv results.csv")
    if output_format not in ("libra", "rexrank", "radeval"):
        raise InputError(f"unknown --format {output_format!r}; choose libra, rexrank or radeval")
    groups_spec = metrics if metrics is not None or suite is not None else "lexical"
    api.parse_metrics(groups_spec, suite)  # a typo fails before any file is read
    judge = JudgeOptions(engine=judge_engine, url=judge_url, model=judge_model, dtype=judge_dtype,
                         batch_size=judge_batch_size, device=device)
    scorers = _scorers(judge, bertscore_model=bertscore_model, radgraph_model=radgraph_model, device=device,
                       batch_size=batch_size, workers=workers, cache=not no_cache)
    pairs = load_pairs(references, predictions, allow_missing=allow_missing)
    model_name = name or (predictions.stem if predictions else references.stem)
    common: dict[str, Any] = {"suite": suite, "strict": strict, "clean": not no_clean, "seed": seed, "scorers": scorers}

    if compare is not None:
        assert predictions is not None
        pairs, pairs_b = align_for_compare(pairs, load_pairs(references, compare, allow_missing=allow_missing),
                                           predictions.name, compare.name, allow_missing)
        result = api.compare_reports(pairs.references, pairs.predictions, pairs_b.predictions, groups_spec,
                                     n_samples=bootstrap or 1000, ids=pairs.ids, **common)
        result["files"] = {"references": str(references), "a": str(predictions), "b": str(compare)}
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            render_compare(result, predictions.name, compare.name)
        if csv_path is not None:
            append_results_csv(csv_path, predictions.stem, to_format(result["a"], output_format))
            append_results_csv(csv_path, compare.stem, to_format(result["b"], output_format))
        return

    result = api.evaluate_reports(pairs.references, pairs.predictions, groups_spec, rouge_bootstrap=rouge_bootstrap,
                                  bootstrap=bootstrap, per_sample=per_sample is not None, ids=pairs.ids, **common)
    if per_sample is not None:
        write_per_sample(per_sample, result.pop("per_sample"))
    result["files"] = {"references": str(references), "predictions": str(predictions) if predictions else None}
    if output_format != "libra":
        result["formatted"] = to_format(result, output_format)
    if csv_path is not None:
        append_results_csv(csv_path, model_name, to_format(result, output_format))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        render(result, model_name, output_format)


def _scorers(judge: Any, **options: Any) -> Any:
    """Scorer models for this run, each checked against free memory before it loads (checkpoint/memory.py)."""
    from libra_cli.checkpoint.memory import scorer_guard
    from libra_cli.metrics import api

    judge.validate()
    scorers = api.make_scorers(judge=judge, **options)
    scorers.options.memory_guard = scorer_guard(options["batch_size"], options["device"])
    return scorers


@eval_app.command("download", help="Fetch scorer models into the Hugging Face cache (once; then everything runs offline).")
def download_cmd(
    suite: Annotated[str | None, typer.Option("--suite", "-s", help=SUITE_HELP + " Default: libra.")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", "-m", help="Models for these metrics (as in `libra eval --metrics`).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="A scorer model by key (repeatable), e.g. radgraph:radgraph-xl, chexbert, ratescore.")] = None,
    radgraph_model: Annotated[str, typer.Option("--radgraph-model", help="RadGraph model for RG_* metrics.")] = "radgraph-xl",
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Judge variant for green / crimson (as in `libra eval --judge-model`).")] = None,
    list_only: Annotated[bool, typer.Option("--list", help="Only show what is cached and what would be fetched (no network for cached ones).")] = False,
) -> None:
    from rich.console import Console

    from libra_cli.metrics import download as dl
    from libra_cli.metrics.formats import render_download

    console = Console(stderr=True)
    keys = dl.models_for(suite, metrics, model, radgraph_model, judge_model)
    plans = dl.local_plan(keys) if list_only else dl.download(keys, console=console)
    render_download(plans, console)
