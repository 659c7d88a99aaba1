"""``libra recipes list`` / ``libra recipes copy``: the training recipes shipped inside the package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

recipes_app = typer.Typer(help="Show and copy the shipped training recipes and launcher presets.",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print name -> path as JSON.")] = False) -> None:
    """The shipped recipes (use a name with --recipe) and accelerate presets (--distributed)."""
    import json

    from libra_cli.training.recipe import list_recipes

    known = list_recipes()
    if as_json:
        typer.echo(json.dumps({k: str(v) for k, v in known.items()}, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"shipped recipes ({escape(str(next(iter(known.values())).parent))})", title_justify="left")
    t.add_column("name", no_wrap=True)
    t.add_column("what it is", overflow="fold")
    for name, path in known.items():
        t.add_row(name, escape(_first_comment(path)))
    Console().print(t)
    typer.echo("use: libra train align --recipe NAME  |  libra recipes copy NAME my.yaml", err=True)


@recipes_app.command("copy")
def copy(
    name: Annotated[str, typer.Argument(help="Recipe name (libra recipes list), e.g. libra7b or accelerate/zero2.")],
    dest: Annotated[Path, typer.Argument(help="Destination file or folder.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Copy a shipped recipe to edit it (torchtune's ``tune cp``)."""
    from libra_cli.atomic import check_output, write_text_atomic
    from libra_cli.training.recipe import find_recipe

    src = find_recipe(name)
    target = dest / src.name if dest.is_dir() else dest
    check_output(target, force, is_dir=False)
    write_text_atomic(target, src.read_text(encoding="utf-8"))
    typer.echo(str(target))


def _first_comment(path: Path) -> str:
    """The recipe's first comment line: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
