"""CLI conventions users expect: environment variables for the common options, --quiet, --json, completion."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PY = [sys.executable, "-m", "libra_cli"]


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PY, *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=300)


def test_environment_variables_set_model_device_and_dtype() -> None:
    by_flag = _run("infer", "-m", "demo", "--example", "--max-new-tokens", "6", "--json")
    by_env = _run("infer", "--example", "--max-new-tokens", "6", "--json", LIBRA_MODEL="demo", LIBRA_DTYPE="bfloat16",
                  LIBRA_DEVICE="cpu")
    assert by_flag.returncode == by_env.returncode == 0, (by_flag.stderr, by_env.stderr)
    a, b = json.loads(by_flag.stdout), json.loads(by_env.stdout)
    assert b["model"] == "demo" and b["dtype"] == "bfloat16" and b["device"] == "cpu" and a["dtype"] == "float32"
    wrong = _run("infer", "--example", LIBRA_MODEL="demo", LIBRA_DEVICE="tpu")
    assert wrong.returncode == 2 and "unknown --device 'tpu'" in wrong.stderr


def test_quiet_prints_only_the_result() -> None:
    res = _run("infer", "-m", "demo", "--example", "--max-new-tokens", "4", "-q")
    assert res.returncode == 0 and res.stdout.strip() and res.stderr.strip() == ""


def test_json_on_result_commands() -> None:
    for args in (["recipes", "list", "--json"], ["doctor", "--json"], ["demo", "--json", "--max-new-tokens", "4"]):
        res = _run(*args)
        assert res.returncode == 0, (args, res.stderr)
        assert isinstance(json.loads(res.stdout), dict), args


def test_shell_completion() -> None:
    script = _run("--show-completion", "bash")
    assert script.returncode == 0 and "_libra_completion" in script.stdout
    words = _run(_LIBRA_COMPLETE="complete_bash", COMP_WORDS="libra inf", COMP_CWORD="1")
    assert "infer" in words.stdout.split()
    words = _run(_LIBRA_COMPLETE="complete_bash", COMP_WORDS="libra train al", COMP_CWORD="2")
    assert "align" in words.stdout.split()
