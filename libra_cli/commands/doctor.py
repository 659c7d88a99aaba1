"""``libra doctor``: versions, devices, caches and data on one screen, with the fix for every problem."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="The whole report as JSON (for bug reports).")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Also estimate the memory this model needs here (nothing is loaded).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="With --model: auto | bfloat16 | float16 | float32.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="With --model: auto | cuda | cpu.")] = "auto",
    num_beams: Annotated[int, typer.Option("--num-beams", help="With --model: beams of the estimate.", min=1)] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="With --model: studies per batch.", min=1)] = 1,
) -> None:
    """What this machine can do: versions, GPUs, extras, cached models, NLTK data; exact fixes for problems."""
    from libra_cli.doctor import OPTIONAL, diagnose, memory_report

    rep = diagnose()
    mem = memory_report(model, dtype, device, num_beams, batch_size) if model else None
    if as_json:
        typer.echo(json.dumps(rep.to_dict() | ({"memory": mem} if mem else {}), indent=2))
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
    if mem:
        _render_memory(con, mem)
    if rep.problems:
        p = Table(title=f"{len(rep.problems)} problem(s)", title_justify="left")
        p.add_column("problem")
        p.add_column("fix", style="cyan")
        for problem, fix in rep.problems:
            p.add_row(escape(problem), escape(fix))
        con.print(p)
    else:
        con.print("[green]no problems found[/]")


def _render_memory(con: Any, mem: dict[str, Any]) -> None:
    """The memory estimate of ``--model``: one row per dtype, the one ``--dtype auto`` picks first."""
    from rich.markup import escape
    from rich.table import Table

    w = mem["workload"]
    t = Table(title=f"memory: {escape(mem['model'])} on {mem['device']} ({mem['parameters'] / 1e9:.2f} B parameters, "
                    f"stored {mem['stored_dtype']} {mem['stored_gb']} GB; batch {w['batch_size']}, "
                    f"{w['num_beams']} beam(s), {w['max_new_tokens']} new tokens)", title_justify="left")
    for col in ("dtype", "needs GB", "weights", "KV + activations", "free GB", "fits"):
        t.add_column(col)
    for name, e in mem["estimates"].items():
        p = e["parts_gb"]
        label = f"{name} (auto)" if name == mem["auto_dtype"] else name
        t.add_row(label, f"{e['total_gb']:.1f}", f"{p['weights'] + p['encoder']:.1f}",
                  f"{p['kv_cache+activations'] + p['image encoding']:.1f}", f"{e['available_gb']:.1f} ({e['source']})",
                  "[green]yes[/]" if e["fits"] else "[red]no[/]")
    con.print(t)
