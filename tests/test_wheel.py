"""A wheel built from the repo carries everything it needs: recipes, presets, templates, the demo model.

The wheel is installed into a fresh venv (dependencies from this environment, ``--no-deps``) and run from
an empty working directory, so nothing can come from the source tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> tuple[Path, Path]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True)
    wheels = list((root / "dist").glob("libra_cli-*.whl"))
    assert len(wheels) == 1
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # dependencies come from the environment running the tests (a user's venv), never the base interpreter's:
    # its site-packages joins the new venv's path after the venv's own (the wheel wins; a .pth line is a plain
    # path entry, so the running env's editable-install hook does not run there)
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    running = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(own, "_running_env.pth").write_text("\n".join(sorted(running)) + "\n", encoding="utf-8")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheels[0])],
                   check=True, capture_output=True)
    work = root / "cwd"
    work.mkdir()
    return py, work


def _run(py: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    return subprocess.run([str(py), "-m", "libra_cli", *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)


def test_wheel_is_what_runs(wheel_env) -> None:  # noqa: ANN001
    py, work = wheel_env
    out = subprocess.run([str(py), "-c", "import libra_cli; print(libra_cli.__file__)"], cwd=work,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert str(REPO) not in out.stdout and "site-packages" in out.stdout, out.stdout


def test_wheel_ships_recipes_and_presets(wheel_env) -> None:  # noqa: ANN001
    py, work = wheel_env
    res = _run(py, work, "recipes", "list", "--json")
    assert res.returncode == 0, res.stderr
    assert {"libra7b", "libra3b", "tiny-cpu", "accelerate/zero2"} <= set(__import__("json").loads(res.stdout))
    res = _run(py, work, "train", "align", "--recipe", "tiny-cpu", "--help")
    assert res.returncode == 0 and "--recipe" in res.stdout
    res = _run(py, work, "recipes", "copy", "libra7b", "mine.yaml")
    assert res.returncode == 0 and (work / "mine.yaml").read_text().startswith("# libra-v1.0-7b")


def test_wheel_runs_the_offline_quick_start(wheel_env) -> None:  # noqa: ANN001
    py, work = wheel_env
    res = _run(py, work, "demo", "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() and "cannot read X-rays" in res.stderr
