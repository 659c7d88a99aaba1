"""``libra data``: prior pairing, report sections and training/eval files from raw MIMIC-CXR.

A thin layer: arguments in, :mod:`libra_cli.data` does the work, a short rich summary out.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from libra_cli.commands.options import OutputFlags, with_flags

data_app = typer.Typer(
    name="data",
    help="Prepare MIMIC-CXR data: pair prior images, extract report sections, build training/eval files.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _console():  # noqa: ANN202 - rich is imported lazily
    from rich.console import Console

    return Console(stderr=True)


def _busy(con, show: OutputFlags, message: str):  # noqa: ANN001, ANN202
    """A spinner on stderr, unless --quiet or --json."""
    import contextlib

    return contextlib.nullcontext() if (show.quiet or show.as_json) else con.status(message)


def _result(show: OutputFlags, stats: object, seconds: float) -> bool:
    """--json: the stats as JSON on stdout; returns True when the summary table should be skipped."""
    if show.as_json:
        import dataclasses
        import json

        typer.echo(json.dumps(dataclasses.asdict(stats) | {"seconds": round(seconds, 3)}, indent=2, default=str))
    return show.as_json or show.quiet


@data_app.command("pair-priors")
@with_flags(show=OutputFlags)
def pair_priors(
    metadata: Annotated[Path, typer.Argument(help="mimic-cxr-2.0.0-metadata.csv(.gz) from MIMIC-CXR-JPG.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output table: *.csv, *.csv.gz, *.jsonl(.gz) or *.parquet.")],
    split: Annotated[Path | None, typer.Option("--split", help="mimic-cxr-2.0.0-split.csv(.gz); rows are joined with it on dicom_id.")] = None,
    split_name: Annotated[str, typer.Option("--split-name", help="train | validate | test | all (needs --split unless 'all').")] = "all",
    views: Annotated[str | None, typer.Option("--views", help="Keep only these ViewPositions before pairing, e.g. 'PA,AP' or 'frontal' ('missing' = empty).")] = None,
    same_view_class: Annotated[bool, typer.Option("--same-view-class", help="Pair only within a view class (frontal / lateral / other).")] = False,
    max_gap_days: Annotated[int | None, typer.Option("--max-gap-days", min=0, help="No prior when it is more than N days older.")] = None,
    image_ext: Annotated[str, typer.Option("--image-ext", help="Image file extension in the paths (jpg for MIMIC-CXR-JPG, dcm for MIMIC-CXR).")] = "jpg",
    *,
    show: OutputFlags,
) -> None:
    """Pair every image with its prior (the Libra README recipe, exact and vectorised)."""
    from rich.table import Table

    from libra_cli.data.pairing import PairOptions, parse_views, run_pair_priors

    opts = PairOptions(
        split_name=split_name.strip().lower(),
        views=parse_views(views),
        same_view_class=same_view_class,
        max_gap_days=max_gap_days,
        image_ext=image_ext.lstrip("."),
    )
    con = _console()
    t0 = time.perf_counter()
    with _busy(con, show, "pairing priors ..."):
        stats = run_pair_priors(metadata, split, out, opts)
    dt = time.perf_counter() - t0
    if _result(show, stats, dt):
        return
    tab = Table(title=f"pair-priors -> {out}", show_header=False, title_justify="left")
    tab.add_row("metadata rows", f"{stats.metadata_rows:,}")
    if split is not None:
        tab.add_row("joined with split", f"{stats.joined_rows:,}")
        tab.add_row(f"in split '{opts.split_name}'", f"{stats.split_rows:,}")
    if stats.dropped_missing:
        tab.add_row("[yellow]dropped (missing id/date)[/]", f"{stats.dropped_missing:,}")
    if opts.views is not None:
        tab.add_row("after --views", f"{stats.view_rows:,}")
    tab.add_row("subjects", f"{stats.subjects:,}")
    tab.add_row("images with a prior", f"{stats.with_prior:,} ({_pct(stats.with_prior, stats.view_rows)})")
    if opts.max_gap_days is not None:
        tab.add_row(f"priors dropped (> {opts.max_gap_days} days)", f"{stats.gap_dropped:,}")
    if stats.split_counts:
        tab.add_row("per split", ", ".join(f"{k} {v:,}" for k, v in sorted(stats.split_counts.items())))
    tab.add_row("time", f"{dt:.2f} s")
    con.print(tab)
    if stats.view_rows == 0:
        con.print("[yellow]notice:[/] no rows left to pair; check --split-name / --views against your files")


@data_app.command("extract-sections")
@with_flags(show=OutputFlags)
def extract_sections(
    reports_dir: Annotated[Path, typer.Argument(help="Unzipped mimic-cxr-reports 'files' folder (pNN/pSUBJECT/sSTUDY.txt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for mimic_cxr_sectioned.csv and mimic_cxr_NN.csv.")],
    workers: Annotated[int, typer.Option("--workers", "-j", min=0, help="Worker processes (0: one per CPU).")] = 0,
    no_split: Annotated[bool, typer.Option("--no-split", help="Write one mimic_cxr_sections.csv instead of 10,000-row chunks.")] = False,
    *,
    show: OutputFlags,
) -> None:
    """Split free-text reports into sections (MIMIC-CXR scripts with Libra's customisation)."""
    from rich.table import Table

    from libra_cli.console import progress_bar
    from libra_cli.data.sections import extract_sections as run

    con = _console()
    nworkers = workers or max(1, min(os.cpu_count() or 1, 16))
    t0 = time.perf_counter()
    with progress_bar(con, "sections", unit="patients", transient=True, disable=show.quiet or show.as_json) as bar:
        task = bar.add_task("sections", total=None, rate="")

        def on_start(total: int) -> None:
            bar.update(task, total=total)

        def on_progress(done: int, reports: int, nbytes: int) -> None:
            el = max(time.perf_counter() - t0, 1e-9)
            bar.update(task, completed=done, rate=f"{reports:,} reports, {reports / el:,.0f}/s")

        stats = run(reports_dir, out, workers=nworkers, no_split=no_split, on_progress=on_progress, on_start=on_start)
    dt = time.perf_counter() - t0
    if _result(show, stats, dt):
        return
    tab = Table(title=f"extract-sections -> {out}", show_header=False, title_justify="left")
    tab.add_row("reports", f"{stats.reports:,} ({stats.reports / max(dt, 1e-9):,.0f}/s, {stats.nbytes / 1e6:,.1f} MB)")
    tab.add_row("mimic_cxr_sectioned.csv rows", f"{stats.sectioned_rows:,} (+{stats.special_cases} special-cased studies)")
    tab.add_row("text files", f"{len(stats.chunk_files)} ({stats.chunk_files[0]} ...)" if stats.chunk_files else "0")
    tab.add_row("with section", ", ".join(f"{k} {v:,}" for k, v in stats.with_section.items()))
    for kind, n in sorted(stats.issue_counts.items()):
        tab.add_row(f"[yellow]{kind}[/]", f"{n:,}")
    if stats.issues_file:
        tab.add_row("issue log", stats.issues_file)
    tab.add_row("time", f"{dt:.2f} s with {nworkers} worker(s)")
    con.print(tab)
    if stats.stale_files:
        con.print(f"[yellow]notice:[/] {out} also holds older files not written by this run: {', '.join(stats.stale_files)}")


@data_app.command("build")
@with_flags(show=OutputFlags)
def build(
    pairs: Annotated[Path, typer.Option("--pairs", help="Output of 'libra data pair-priors' (csv/jsonl/parquet).")],
    sections: Annotated[Path, typer.Option("--sections", help="mimic_cxr_sectioned.csv from 'libra data extract-sections'.")],
    out_json: Annotated[Path | None, typer.Option("--out-json", help="Training JSON (conversations format).")] = None,
    out_questions: Annotated[Path | None, typer.Option("--out-questions", help="Evaluation questions JSONL.")] = None,
    hf_dataset: Annotated[Path | None, typer.Option("--hf-dataset", help="Also save a Hugging Face dataset folder (MIMIC-CXR-RRG columns).")] = None,
    split: Annotated[Path | None, typer.Option("--split", help="Split file, when the pairs have no split column (or to override it).")] = None,
    split_name: Annotated[str, typer.Option("--split-name", help="train | validate | test | all.")] = "all",
    target: Annotated[str, typer.Option("--target", help="Section to generate: findings, impression, ...")] = "findings",
    query: Annotated[str | None, typer.Option("--query", help="Instruction text (default: the findings query).")] = None,
    context: Annotated[str | None, typer.Option("--context", help="Clinical context sections in the prompt: e.g. 'indication,history,comparison,technique' or 'all'.")] = None,
    template: Annotated[str | None, typer.Option("--template", help="Prompt format, e.g. '{query} INDICATION: {indication}' (overrides the --context layout).")] = None,
    missing_text: Annotated[str, typer.Option("--missing-text", help="What an absent context section reads as.")] = "None",
    missing_prior: Annotated[str, typer.Option("--missing-prior", help="Images without a prior: single ([current]) | self ([current, current]) | drop.")] = "single",
    image_prefix: Annotated[str, typer.Option("--image-prefix", help="Prefix for image paths (they are relative to the image folder).")] = "",
    keep_whitespace: Annotated[bool, typer.Option("--keep-whitespace", help="Keep report line breaks (default: collapse whitespace).")] = False,
    per_study: Annotated[bool, typer.Option("--per-study", help="One sample per study: its frontal image (PA > AP), with that image's prior; the choice is recorded.")] = False,
    *,
    show: OutputFlags,
) -> None:
    """Join pairs and sections into the training JSON and evaluation questions JSONL."""
    from rich.table import Table

    from libra_cli.data import FINDINGS_QUERY
    from libra_cli.data.build import BuildOptions, parse_context, run_build

    opts = BuildOptions(
        target=target.strip().lower(),
        query=query if query is not None else FINDINGS_QUERY,
        context=parse_context(context),
        template=template,
        missing_text=missing_text,
        split_name=split_name.strip().lower(),
        missing_prior=missing_prior.strip().lower(),
        image_prefix=image_prefix,
        compact_whitespace=not keep_whitespace,
        per_study=per_study,
    )
    con = _console()
    t0 = time.perf_counter()
    with _busy(con, show, "building ..."):
        stats = run_build(pairs, sections, out_json, out_questions, opts, split_path=split, hf_out=hf_dataset)
    dt = time.perf_counter() - t0
    if _result(show, stats, dt):
        return
    tab = Table(title="build", show_header=False, title_justify="left")
    tab.add_row("pairs rows", f"{stats.rows:,}")
    if opts.split_name != "all":
        tab.add_row(f"in split '{opts.split_name}'", f"{stats.after_split:,}")
    tab.add_row("studies in sections file", f"{stats.sections_rows:,}")
    tab.add_row(
        f"[yellow]dropped: no {opts.target}[/]",
        f"{stats.dropped_no_target_images:,} images in {stats.dropped_no_target_studies:,} studies",
    )
    if stats.dropped_no_prior:
        tab.add_row("[yellow]dropped: no prior[/]", f"{stats.dropped_no_prior:,}")
    tab.add_row("samples written", f"{stats.kept:,} ({stats.with_prior:,} with a prior)")
    for o in stats.outputs:
        tab.add_row("wrote", o)
    tab.add_row("time", f"{dt:.2f} s")
    con.print(tab)


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b else "-"
