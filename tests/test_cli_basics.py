from __future__ import annotations

import subprocess
import sys

from libra_cli import __version__


def test_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "libra_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"libra {__version__}"
    out = subprocess.run([sys.executable, "-m", "libra_cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "Usage" in out.stdout


def _commands(group, path=()):  # noqa: ANN001, ANN202
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_help_shows_bracketed_text_as_written() -> None:
    """Rich markup must never eat help text: '[current, prior]' stays on screen in every command's --help."""
    import re

    import typer
    from typer.testing import CliRunner

    from libra_cli.cli import app

    group = typer.main.get_command(app)
    checked = 0
    for path, cmd in _commands(group):
        res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
        assert res.exit_code == 0, (path, res.output)
        shown = " ".join(res.output.split())
        for param in cmd.params:
            for bracket in re.findall(r"\[[^\]]*\]", getattr(param, "help", None) or ""):
                assert bracket in shown, (path, param.name, bracket)
                checked += 1
    assert checked >= 2
