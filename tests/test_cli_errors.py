"""User mistakes: one line on stderr, non-zero exit, no traceback; --debug shows the traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import CXR, FIXTURES

MODEL = str(FIXTURES / "tiny-libra-tac")


def _run(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "libra_cli", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["infer", "-m", MODEL, "/nope/missing.jpg"], "image not found"),
        (["infer", "-m", MODEL, "__NONIMAGE__"], "not a readable image"),
        (["infer", "-m", "no-such-owner/no-such-model", str(CXR / "current.jpg")], "not in the local Hugging Face cache"),
        (["infer", "-m", MODEL, str(CXR / "current.jpg"), "--conv-mode", "libra_v9", "--max-new-tokens", "2"],
         "unknown --conv-mode"),
        (["infer", "-m", MODEL, str(CXR / "current.jpg"), "--num-beams", "0"], "--num-beams"),
    ],
)
def test_one_line_errors(tmp_path, args, needle) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image")
    args = [str(bad) if a == "__NONIMAGE__" else a for a in args]
    out = _run(*args, tmp_path=tmp_path)
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_debug_shows_traceback(tmp_path) -> None:
    out = _run("--debug", "infer", "-m", MODEL, "/nope/missing.jpg", tmp_path=tmp_path)
    assert out.returncode != 0
    assert "Traceback" in out.stderr
