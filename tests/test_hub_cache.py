"""Hub ids resolve from the local Hugging Face cache with HF_HUB_OFFLINE=1 (the real hub-loading code)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import CXR, FIXTURES

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache: Path, repo_id: str, src: Path) -> Path:
    """Lay out ``src`` as the cached snapshot of ``repo_id`` (the layout huggingface_hub writes)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / REVISION
    shutil.copytree(src, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snap


def test_infer_by_hub_id_offline_from_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    _cache_repo(cache, "acme/tiny-rad-dino", FIXTURES / "tiny-rad-dino")
    snap = _cache_repo(cache, "acme/tiny-libra", FIXTURES / "tiny-libra-tac")
    cfg = json.loads((snap / "config.json").read_text())
    cfg["mm_vision_tower"] = "acme/tiny-rad-dino"  # a hub id, as in the published configs
    (snap / "config.json").write_text(json.dumps(cfg))
    expected = json.loads((FIXTURES / "expected" / "tiny-libra-tac.json").read_text())
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))
    out = subprocess.run(
        [sys.executable, "-m", "libra_cli", "infer", "-m", "acme/tiny-libra", str(CXR / "current.jpg"),
         str(CXR / "prior.jpg"), "--max-new-tokens", "24", "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected["greedy"]["returned_text"]
    # a repo missing from the cache names itself in a one-line error
    out = subprocess.run(
        [sys.executable, "-m", "libra_cli", "infer", "-m", "acme/not-cached", str(CXR / "current.jpg")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "acme/not-cached" in out.stderr and "Traceback" not in out.stderr
