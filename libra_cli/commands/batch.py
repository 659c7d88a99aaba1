"""``libra batch``: answers for a whole questions file / dataset (thin layer over ``libra_cli.batch``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from libra_cli.commands.options import (
    EngineFlags,
    GenerationFlags,
    Group,
    ModelFlags,
    OutputFlags,
    shard_gpus,
    with_flags,
)
from libra_cli.commands.pacs_flags import DicomwebFlags, ReportFlags
from libra_cli.errors import InputError

IN = "Input"
RUN = "Run"


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)


@with_flags(model=ModelFlags, gen=GenerationFlags, out_flags=OutputFlags, eng=EngineFlags,
            pacs=Group(DicomwebFlags, exclude=("study",)), reports=ReportFlags)
def batch(
    input: Annotated[str | None, typer.Argument(help="Questions JSONL (docs/batch.md#inputs), CSV, parquet file or dataset folder.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Answers JSONL (appended per batch; reruns resume).", rich_help_panel=RUN)] = Path("answers.jsonl"),
    dataset: Annotated[str | None, typer.Option("--dataset", help="Hugging Face dataset (hub name, folder or parquet), e.g. X-iZhang/MIMIC-CXR-RRG.", rich_help_panel=IN)] = None,
    config: Annotated[str | None, typer.Option("--config", help="Dataset config, e.g. findings_section.", rich_help_panel=IN)] = None,
    split: Annotated[str | None, typer.Option("--split", help="Dataset split (default: test, or the only split).", rich_help_panel=IN)] = None,
    image_folder: Annotated[str | None, typer.Option("--image-folder", help="Folder that relative image paths are under (default: the input file's folder).", rich_help_panel=IN)] = None,
    image_column: Annotated[str, typer.Option("--image-column", help="Current-image column (CSV / dataset).", rich_help_panel=IN)] = "main_image",
    prior_column: Annotated[str, typer.Option("--prior-column", help="Prior-image column; empty cells use the current image (dummy prior).", rich_help_panel=IN)] = "prior_image",
    prompt_column: Annotated[str, typer.Option("--prompt-column", help="Prompt column (missing or empty: the model's findings query).", rich_help_panel=IN)] = "default_prompt",
    id_column: Annotated[str | None, typer.Option("--id-column", help="question_id column (default: question_id or id, else the row number).", rich_help_panel=IN)] = None,
    context_column: Annotated[str | None, typer.Option("--context-column", help="Clinical-context column appended to the prompt (e.g. indication).", rich_help_panel=IN)] = None,
    reference_column: Annotated[str | None, typer.Option("--reference-column", help="Reference-report column, copied to metadata.reference.", rich_help_panel=IN)] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N samples (a quick look).", min=1, rich_help_panel=IN)] = None,
    batch_size: Annotated[str, typer.Option("--batch-size", "-b", help="Samples per batch, or auto (GPU: largest that fits; CPU: 16).", rich_help_panel=RUN)] = "auto",
    workers: Annotated[int, typer.Option("--workers", help="Background image decoding threads (0 = decode in the main thread).", min=0, rich_help_panel=RUN)] = 2,
    cache_mb: Annotated[int, typer.Option("--cache-mb", help="Memory for encoder outputs of images shared by several samples.", min=0, rich_help_panel=RUN)] = 2048,
    num_shards: Annotated[int | None, typer.Option("--num-shards", help="Split the work into N shards (default: WORLD_SIZE under accelerate/torchrun, else 1).", min=1, rich_help_panel=RUN)] = None,
    shard: Annotated[int | None, typer.Option("--shard", help="This process's shard, 0..N-1 (default: RANK).", min=0, rich_help_panel=RUN)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again instead of resuming from --out.", rich_help_panel=RUN)] = False,
    model_id: Annotated[str | None, typer.Option("--model-id", help="model_id written in the answers (default: the model folder name).", rich_help_panel=RUN)] = None,
    *,
    model: ModelFlags,
    gen: GenerationFlags,
    out_flags: OutputFlags,
    eng: EngineFlags,
    pacs: DicomwebFlags,
    reports: ReportFlags,
) -> None:
    """Generate reports for every sample of a questions file, dataset or PACS: batched, resumable, sharded."""
    from rich.console import Console

    from libra_cli import batch as b

    err = Console(stderr=True)
    engine = eng.check()
    bs = b.parse_batch_size(batch_size)
    n, k = b.resolve_shard(num_shards, shard)
    settings = gen.settings()
    quiet = out_flags.quiet or out_flags.as_json
    cols = b.Columns(image=image_column, prior=prior_column or None, prompt=prompt_column or None, id=id_column,
                     context=context_column, reference=reference_column)
    job = _pacs_job(pacs, reports, bool(input or dataset), limit, out, n, k, overwrite, workers, err, quiet)
    if job is not None:
        items, errors = job.items, job.errors
    else:
        if reports.fhir or reports.sr or reports.stow:
            raise InputError("--fhir / --sr / --stow in batch report PACS studies: use them with --dicomweb and "
                             "--studies or --since")
        items, errors = b.read_input(input, dataset=dataset, config=config, split=split, image_folder=image_folder,
                                     cols=cols)
        items, errors = b.apply_limit(items, errors, limit)
        if not items and not errors:
            raise InputError("the input holds no samples")
    progress = _Progress(err, quiet)
    options = {}
    if engine == "vllm":
        options["options"] = vllm = eng.vllm_options(settings.seed)
        shard_gpus(n, k, vllm.gpus_per_model)  # one vLLM instance per shard: data parallelism
    else:
        model.device = b.shard_device(model.device, n, k)
    from libra_cli.checkpoint.memory import Workload

    runner = b.BatchRunner(model.load_engine(engine, settings, quiet=quiet, workload=Workload.for_settings(settings, bs),
                                             **options), settings, batch_size=bs, workers=workers, cache_mb=cache_mb,
                           model_id=model_id, on_batch=progress.advance)
    try:
        stats = (job.run if job else b.run_batch)(runner, items, errors, out, num_shards=n, shard=k,
                                                  overwrite=overwrite, on_start=progress.start)
    finally:
        progress.stop()
    if out_flags.as_json:
        import json

        typer.echo(json.dumps(stats.to_dict(), indent=2))
    elif not quiet:
        _summary(err, stats, n, k)
    if stats.exit_failed:
        raise typer.Exit(b.EXIT_SAMPLES_FAILED)


class _Progress:
    """Rich progress bar with samples/s, tokens/s and ETA."""

    def __init__(self, console: object, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet
        self.bar = None
        self.task = None
        self.tokens = 0
        self.t0 = 0.0

    def start(self, total: int) -> None:
        import time

        from libra_cli.console import progress_bar

        self.t0 = time.perf_counter()
        if self.quiet:
            return
        self.bar = progress_bar(self.console, "generating")
        self.task = self.bar.add_task("gen", total=total, rate="")
        self.bar.start()

    def advance(self, n: int, tokens: int) -> None:
        import time

        self.tokens += tokens
        if self.bar is None:
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        done = self.bar.tasks[0].completed + n
        self.bar.update(self.task, advance=n, rate=f"{done / dt:.2f} samples/s {self.tokens / dt:.0f} tok/s")

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _summary(console, stats, n: int, k: int) -> None:  # noqa: ANN001
    from rich.table import Table

    t = Table(title="libra batch" + (f" (shard {k} of {n})" if n > 1 else ""), show_header=False)
    rows = [
        ("samples", str(stats.total)),
        ("answered now", str(stats.answered)),
        ("already done (resumed)", str(stats.resumed)),
        ("failed", f"{stats.failed} (see {stats.errors_out})" if stats.failed else "0"),
        *([("failed, all shards", str(stats.failed_all_shards))] if stats.merged and n > 1 else []),
        ("batch size", str(stats.batch_size)),
        ("wall time", f"{stats.wall_s:.1f} s"),
        ("samples/s", f"{stats.samples_per_s:.2f}"),
        ("tokens/s", f"{stats.tokens_per_s:.1f}"),
        ("model waited for images", f"{100 * stats.image_wait_fraction:.1f}% of the time"),
        ("images encoded / cache hits", f"{stats.encoded_images} / {stats.cache_hits}"),
        ("answers", stats.out if stats.merged is not False else f"{stats.out} (merged when every shard is done)"),
        *_report_rows(getattr(stats, "reports", None)),
    ]
    for a, v in rows:
        t.add_row(a, v)
    console.print(t)


def _pacs_job(pacs, reports, other_input, limit, out, n, k, overwrite, workers, err, quiet):  # noqa: ANN001, ANN202
    """``--dicomweb --studies/--since``: the studies of this shard, looked up (libra_cli.pacs.batch); else None."""
    if not pacs.batch_wanted():
        return None
    if other_input:
        raise InputError("give INPUT / --dataset, or --dicomweb with --studies / --since, not both")
    from libra_cli.pacs.batch import open_batch

    return open_batch(pacs.dicomweb, studies=pacs.studies, since=pacs.since, prior=pacs.prior_study,
                      modalities=pacs.modalities(), timeout=pacs.dicomweb_timeout, limit=limit, out=out, num_shards=n,
                      shard=k, overwrite=overwrite, targets=reports.targets(folders=True, dicomweb=True),
                      workers=max(1, workers), say=lambda line: err.print(line, highlight=False, markup=False),
                      quiet=quiet)


def _report_rows(reports: dict | None) -> list[tuple[str, str]]:
    """Summary rows for --fhir / --sr / --stow (libra_cli.pacs.batch)."""
    if not reports:
        return []
    rows = [("reports written / failed", f"{reports['written']} / {reports['failed']} (log {reports['log']})")]
    rows += [(f"{k.upper() if k == 'sr' else 'FHIR'} folder", reports[k]) for k in ("fhir", "sr") if k in reports]
    if reports.get("stored"):
        rows.append(("SRs stored (STOW-RS)", str(reports["stored"])))
    return rows
