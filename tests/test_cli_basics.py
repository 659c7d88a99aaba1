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
