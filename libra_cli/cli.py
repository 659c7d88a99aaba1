"""The ``libra`` executable: a thin Typer layer over the core modules.

Commands parse arguments, call the core and render results; they hold no logic.
Every command module imports torch/transformers lazily, so ``libra --help`` is instant.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from libra_cli import __version__
from libra_cli.console import quiet_third_party, set_verbose
from libra_cli.errors import LibraError, explain

app = typer.Typer(
    name="libra",
    help="Temporal chest X-ray report generation (Libra): infer, batch, eval, data, train, convert, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    rich_markup_mode="markdown",  # panels, and "[current, prior]" in help is text, not rich markup
)
err_console = Console(stderr=True)


def _hide_flag_types() -> None:
    """typer >= 0.2x prints ``<bool>`` beside every on/off flag in ``--help``; a flag takes no value, so show none."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_libra", False):
        return

    def display_type_rich(self: TyperOption, ctx: object) -> str | None:
        return None if self.is_flag and not self.count else shown(self, ctx)

    display_type_rich._libra = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"libra {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (implies --verbose)."),
    verbose: bool = typer.Option(False, "--verbose", help="Show third-party libraries' notices and warnings."),
) -> None:
    """libra: run, evaluate and train Libra chest X-ray report generators."""
    if debug:
        os.environ["LIBRA_DEBUG"] = "1"


def _register() -> None:
    """Attach every command module (each defines ``register(app)``)."""
    import importlib

    from libra_cli.commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(f"libra_cli.commands.{name}").register(app)


_register()


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("LIBRA_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    set_verbose(debug or "--verbose" in argv)
    quiet_third_party()
    try:
        app(args=argv, prog_name="libra", standalone_mode=True)
    except LibraError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - last line of defence: never show a traceback unasked
        if debug:
            raise
        msg, code = explain(exc) or (
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 1)
        err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
        sys.exit(code)
