"""kill -9 in the middle of ``libra batch`` (a real subprocess): no torn or duplicate line; a rerun resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from tests.conftest import CXR, FIXTURES


def _lines(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), "torn last line"
    recs = [json.loads(x) for x in data.decode().splitlines()]
    ids = [r["question_id"] for r in recs]
    assert len(ids) == len(set(ids)), "duplicate line"
    return recs


def test_kill_9_mid_run_then_resume(tmp_path: Path) -> None:
    img = Image.open(CXR / "current.jpg").convert("L")
    img.thumbnail((120, 120))
    img.save(tmp_path / "c.png")
    n = 64  # enough work left after the 4th line that a fast machine cannot finish before the kill
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"question_id": i, "image": ["c.png"], "text": "Describe." + " ok" * (i % 3)}) + "\n"
                         for i in range(n)))
    out = tmp_path / "ans.jsonl"
    cmd = [sys.executable, "-m", "libra_cli", "batch", str(q), "--model", str(FIXTURES / "tiny-libra-tac"),
           "--out", str(out), "--max-new-tokens", "16", "-b", "2", "--device", "cpu", "-q"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:  # wait for a few flushed batches
            if out.exists() and out.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = _lines(out)
    assert 4 <= len(first) < n
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    final = _lines(out)
    assert [r["question_id"] for r in final] == list(range(n))
    before = {r["question_id"]: r for r in first}
    assert all(r == before[r["question_id"]] for r in final if r["question_id"] in before)
