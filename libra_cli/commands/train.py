"""``libra train align`` / ``libra train finetune``: the two-stage recipe (logic in ``libra_cli.training``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from libra_cli.commands.options import OutputFlags, with_flags
from libra_cli.errors import InputError

if TYPE_CHECKING:
    from libra_cli.training.recipe import Recipe

train_app = typer.Typer(help="Train Libra: stage 1 align (connector only), stage 2 finetune (LoRA).",
                        no_args_is_help=True)

@dataclass
class TrainFlags:
    """The flags of both stages (one definition; ``libra train align`` and ``finetune`` share them)."""

    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe YAML, or a shipped recipe: libra7b, libra3b, tiny-cpu (libra recipes list).")]
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field: --set learning_rate=1e-4 (repeatable).")] = None
    out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder (recipe output_dir).")] = None
    resume: Annotated[bool, typer.Option("--resume", help="Resume from the newest complete checkpoint-N in the output folder.")] = False
    resume_from: Annotated[str | None, typer.Option("--resume-from", help="Resume from this checkpoint folder.")] = None
    force: Annotated[bool, typer.Option("--force", help="Start again in an output folder that holds an earlier run (its contents are removed).")] = False
    distributed: Annotated[str | None, typer.Option("--distributed", help="Launch on several GPUs with a preset: ddp | zero2 | zero3 | fsdp.")] = None
    num_processes: Annotated[int | None, typer.Option("--num-processes", help="GPUs for --distributed (default: all visible).")] = None
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the recipe and the data, print the resolved recipe, load no model.")] = False


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")


@train_app.command("align")
@with_flags(flags=TrainFlags, show=OutputFlags)
def align(*, flags: TrainFlags, show: OutputFlags) -> None:
    """Stage 1: train the connector (encoder and LLM frozen); each checkpoint holds the connector file."""
    _run("align", flags, show)


@train_app.command("finetune")
@with_flags(flags=TrainFlags, show=OutputFlags)
def finetune(*, flags: TrainFlags, show: OutputFlags) -> None:
    """Stage 2: LoRA fine-tune of the LLM; writes the original LoRA layout (load with --model-base)."""
    _run("finetune", flags, show)


def _run(stage: str, f: TrainFlags, show: OutputFlags) -> None:
    import yaml

    from libra_cli.console import err_console
    from libra_cli.training.recipe import load_recipe, parse_overrides

    err = err_console()
    overrides = parse_overrides(f.set_)
    if f.out:
        overrides["output_dir"] = f.out
    if f.distributed:
        overrides["distributed"] = f.distributed
    if show.quiet or show.as_json:
        overrides["disable_tqdm"] = "true"  # log lines instead of a bar (and none of them with --quiet)
    recipe = load_recipe(f.recipe, stage, overrides)
    from libra_cli.training.data import prepare_data
    from libra_cli.training.outputs import check_output_dir, resolve_resume

    train_records, eval_records = prepare_data(recipe)  # data errors before any model loads
    resume = f.resume_from or f.resume
    if not f.dry_run and "LOCAL_RANK" not in os.environ:  # the launcher's processes find it checked already
        check_output_dir(recipe.output_dir, resume=bool(resume), force=f.force)
    ckpt = resolve_resume(resume, recipe.output_dir)
    if f.dry_run:
        typer.echo(yaml.safe_dump({"stage": stage, **recipe.to_dict()}, sort_keys=False).rstrip())
        err.print(f"[dim]{len(train_records)} training records"
                  + (f", {len(eval_records)} validation records" if eval_records else "") + "[/]")
        return
    if recipe.distributed != "none" and "LOCAL_RANK" not in os.environ:
        _launch(recipe.distributed, f.num_processes)
        return
    from libra_cli.commands.options import quiet_third_party

    quiet_third_party()  # before transformers' Trainer imports DeepSpeed
    recipe_precision(recipe)
    from libra_cli.training.trainer import train

    res = train(recipe, stage, resume=ckpt, quiet=show.quiet)  # launched processes get --quiet on their command line
    if os.environ.get("RANK", "0") != "0":  # one summary (and one output path on stdout) per run, not per process
        return
    if show.as_json:
        import dataclasses
        import json

        typer.echo(json.dumps(dataclasses.asdict(res), indent=2))
        return
    first, last = (res.losses[0], res.losses[-1]) if res.losses else (float("nan"), float("nan"))
    if not show.quiet:
        err.print(f"[green]done:[/] {res.global_step} steps in {res.seconds:.0f}s, loss {first:.4f} -> {last:.4f}, "
                  f"{res.trainable:,} of {res.total:,} parameters trained"
                  + (f", {res.tokens_per_s:.0f} tokens/s" if res.tokens_per_s else "")
                  + (f"; {res.truncated} samples truncated to model_max_length" if res.truncated else ""))
    typer.echo(res.output_dir)


def recipe_precision(recipe: Recipe) -> None:
    """The recipe decides mixed precision: a launcher's ``ACCELERATE_MIXED_PRECISION`` (e.g. ``mixed_precision: bf16``
    in a preset) would otherwise silently autocast a float32 recipe, since the Trainer's Accelerator reads it."""
    if "ACCELERATE_MIXED_PRECISION" in os.environ:
        os.environ["ACCELERATE_MIXED_PRECISION"] = recipe.mixed_precision


def _launch(preset: str, num_processes: int | None) -> None:
    """Re-run this command under ``accelerate launch`` with a shipped preset."""
    cfg = preset_path(preset)
    if shutil.which("accelerate") is None:
        raise InputError("--distributed needs accelerate's launcher (pip install accelerate)")
    if not num_processes:  # default: every visible GPU (the preset's own count is only a placeholder)
        import torch

        num_processes = torch.cuda.device_count()
        if num_processes < 1:
            raise InputError("--distributed found no GPU; pass --num-processes N to run N CPU processes")
    cmd = ["accelerate", "launch", "--config_file", str(cfg), "--num_processes", str(num_processes)]
    cmd += ["-m", "libra_cli", *sys.argv[1:]]
    raise typer.Exit(subprocess.call(cmd))


def preset_path(preset: str) -> Path:
    """The accelerate preset shipped in the package (``libra recipes list`` shows them)."""
    from libra_cli.training.recipe import shipped

    p = shipped("accelerate") / f"{preset}.yaml"
    if not p.is_file():
        raise InputError(f"no accelerate preset {preset!r}; use ddp, zero2, zero3 or fsdp")
    return p
