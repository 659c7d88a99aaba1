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


def test_out_of_memory_is_one_line(monkeypatch, capsys) -> None:
    import torch

    from libra_cli import cli

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.delenv("LIBRA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["infer", "x.jpg"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of memory") and "--batch-size" in err and len(err.splitlines()) == 1


def test_conv_mode_mismatch_warns_once(capsys) -> None:
    from libra_cli.checkpoint import load_model

    for _ in range(2):
        lm = load_model(MODEL, conv_mode="v1", device="cpu")
    assert lm.conv_mode == "v1"
    err = capsys.readouterr().err
    assert err.count("differs from 'libra_v1'") == 1


def test_error_text_with_brackets_is_not_eaten_as_markup(monkeypatch, capsys) -> None:
    from libra_cli import cli
    from libra_cli.errors import InputError

    def boom(*args, **kwargs):
        raise InputError("needs an extra: pip install 'libra-cli[train]'")

    monkeypatch.setattr(cli, "app", boom)
    monkeypatch.delenv("LIBRA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train"])
    assert exc.value.code == 2
    assert "libra-cli[train]" in capsys.readouterr().err
