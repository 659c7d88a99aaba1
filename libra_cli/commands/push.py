"""``libra push``: publish a trained or converted checkpoint folder (with its model card) on the hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from libra_cli.commands.options import OutputFlags, with_flags


def register(app: typer.Typer) -> None:
    app.command("push")(push)


@with_flags(out=OutputFlags)
def push(
    folder: Annotated[Path, typer.Argument(help="Output folder of libra train / libra convert.")],
    repo_id: Annotated[str, typer.Argument(help="Hub repo to create or update, e.g. me/libra-mimic-ft.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="Branch to push to (default: main).")] = None,
    message: Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")] = None,
    *,
    out: OutputFlags,
) -> None:
    """Upload FOLDER to REPO_ID (no optimizer state or intermediate checkpoints); writes a model card if missing."""
    from libra_cli.publish import push as run

    res = run(folder, repo_id, private=private, revision=revision, message=message)
    if out.as_json:
        typer.echo(json.dumps(res.__dict__, indent=2))
        return
    if not out.quiet:
        typer.echo(f"uploaded {res.files} files ({res.bytes / 1e6:.1f} MB) to {res.repo_id} in {res.seconds:.1f} s "
                   f"({res.bytes / 1e6 / max(res.seconds, 1e-9):.1f} MB/s)", err=True)
    typer.echo(res.url)
