"""``libra doctor``: versions, devices, caches and data on one screen, with the fix for every problem."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(as_json: Annotated[bool, typer.Option("--json", help="The whole report as JSON (for bug reports).")] = False) -> None:
    """What this machine can do: versions, GPUs, extras, cached models, NLTK data; exact fixes for problems."""
    from libra_cli.doctor import OPTIONAL, diagnose

    rep = diagnose()
    if as_json:
        typer.echo(json.dumps(rep.to_dict(), indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console()
    t = Table(title="libra doctor", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in rep.system.items():
        t.add_row(k, escape(str(v)))
    t.add_row("packages", escape(", ".join(f"{k} {v or 'MISSING'}" for k, v in rep.packages.items())))
    for name, (what, _) in OPTIONAL.items():
        v = rep.optional.get(name)
        t.add_row(f"  {name}", f"[green]{v}[/]" if v else f"[dim]not installed ({escape(what)})[/]")
    for d in rep.devices:
        t.add_row(d["device"], escape(", ".join(f"{k} {v}" for k, v in d.items() if k != "device")))
    t.add_row("HF cache", escape(f"{rep.hub.get('cache')} (free {rep.hub.get('free_disk_gb', '?')} GB)"))
    t.add_row("offline", str(rep.hub.get("offline")))
    cached = rep.hub.get("cached") or {}
    t.add_row("cached models", escape(", ".join(f"{k} ({v} GB)" for k, v in cached.items()) or "none"))
    t.add_row("demo model", escape(str(rep.data.get("demo_model") or "MISSING")))
    nltk = rep.data.get("nltk") or {}
    t.add_row("NLTK data", escape(", ".join(f"{k} {'ok' if v else 'MISSING'}" for k, v in nltk.items()) or "n/a"))
    con.print(t)
    if rep.problems:
        p = Table(title=f"{len(rep.problems)} problem(s)", title_justify="left")
        p.add_column("problem")
        p.add_column("fix", style="cyan")
        for problem, fix in rep.problems:
            p.add_row(escape(problem), escape(fix))
        con.print(p)
    else:
        con.print("[green]no problems found[/]")
