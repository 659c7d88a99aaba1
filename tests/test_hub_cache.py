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


def test_revision_picks_the_snapshot_and_is_recorded(tmp_path: Path) -> None:
    """Two revisions in the cache (main, and a tag v2 with other weights): --revision chooses, outputs say which."""
    from tests.builders.tiny import make_tiny_libra

    cache = tmp_path / "hub"
    main = _cache_repo(cache, "acme/tiny-libra", FIXTURES / "tiny-libra-tac")
    shutil.copytree(FIXTURES / "tiny-rad-dino", tmp_path / "tiny-rad-dino")
    other = "fedcba9876543210fedcba9876543210fedcba98"
    v2 = cache / "models--acme--tiny-libra" / "snapshots" / other
    make_tiny_libra(v2, FIXTURES / "tokenizer", tower=str(tmp_path / "tiny-rad-dino"), seed=5)
    (cache / "models--acme--tiny-libra" / "refs" / "v2").write_text(other)
    cfg = json.loads((main / "config.json").read_text())
    cfg["mm_vision_tower"] = str(tmp_path / "tiny-rad-dino")
    (main / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "home"))

    def infer(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "libra_cli", "infer", "-m", "acme/tiny-libra", str(CXR / "current.jpg"),
                               "--max-new-tokens", "8", "--device", "cpu", "--json", *extra],
                              capture_output=True, text=True, env=env, cwd=tmp_path)

    a, b, c = infer(), infer("--revision", "v2"), infer("--revision", other)
    assert a.returncode == b.returncode == c.returncode == 0, (a.stderr, b.stderr, c.stderr)
    ja, jb, jc = (json.loads(x.stdout) for x in (a, b, c))
    assert ja["commit"] == REVISION and ja["revision"] is None
    assert jb["commit"] == other and jb["revision"] == "v2" and jc["commit"] == other
    assert jb["token_ids"] == jc["token_ids"] != ja["token_ids"]
    missing = infer("--revision", "v3")
    assert missing.returncode == 2 and "revision v3" in missing.stderr and "Traceback" not in missing.stderr
