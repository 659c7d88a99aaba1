"""``libra download``: fetch a model (its base and its vision tower too) for offline use."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from libra_cli.commands.options import MODEL_HELP, ModelBaseOpt, OutputFlags, with_flags


def register(app: typer.Typer) -> None:
    app.command("download")(download)


@with_flags(out=OutputFlags)
def download(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit.")] = None,
    model_base: ModelBaseOpt = None,
    no_tower: Annotated[bool, typer.Option("--no-vision-tower", help="Do not fetch the encoder the config names.")] = False,
    *,
    out: OutputFlags,
) -> None:
    """Download only the files a checkpoint needs into the Hugging Face cache; then HF_HUB_OFFLINE=1 works."""
    from libra_cli.checkpoint.hub import download as fetch

    t0 = time.perf_counter()
    rows = fetch(model, revision=revision, model_base=model_base, with_tower=not no_tower)
    dt = time.perf_counter() - t0
    if out.as_json:
        typer.echo(json.dumps({"downloaded": rows, "seconds": dt}, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from libra_cli.console import err_console

    t = Table(title=f"ready for offline use ({dt:.1f} s)", title_justify="left")
    for col in ("what", "name", "commit", "size", "folder"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["what"]), escape(str(r["name"])), str(r["commit"] or "-")[:12],
                  f"{int(r['bytes']) / 1e9:.2f} GB", escape(str(r["folder"])))
    if not out.quiet:
        err_console().print(t)
    for r in rows:
        typer.echo(r["folder"])
