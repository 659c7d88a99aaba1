"""``libra demo``: the bundled example pair on the bundled demo model: works offline, in seconds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from libra_cli.commands.options import OutputFlags, with_flags


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


@with_flags(out=OutputFlags)
def demo(
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Tokens to generate.")] = 48,
    *,
    out: OutputFlags,
) -> None:
    """Run the example X-rays through the tiny demo model shipped with libra (no download, CPU)."""
    from rich.markup import escape

    from libra_cli.console import err_console
    from libra_cli.demo import REAL_MODELS, run_demo

    err = err_console()
    if out.quiet or out.as_json:
        res = run_demo(max_new_tokens)
    else:
        with err.status("running the demo model on the example X-rays ..."):
            res = run_demo(max_new_tokens)
    if out.as_json:
        typer.echo(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
        return
    if not out.quiet:
        err.print(f"[bold yellow]{escape(res.notice)}[/]")
        err.print(f"[dim]current: {escape(res.current)}\nprior:   {escape(res.prior)}[/]")
    typer.echo(res.text)
    if not out.quiet:
        err.print(f"[dim]{res.new_tokens} tokens in {res.generate_s:.2f}s; model loaded in {res.load_s:.1f}s[/]")
        err.print(escape(REAL_MODELS))
