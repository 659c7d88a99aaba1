"""benchmarks/real_size.py at a tiny shape: the same stages as the 7B run (build shard by shard, machine
bounds, libra in a cold process, the README's infer with no dtype flag), in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_real_size_benchmark_runs_at_a_tiny_shape(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "real_size.py"), "--shape", "tiny", "--out",
                           str(tmp_path / "ckpt"), "--tokens", "3", "--beams", "2", "--stages", "build,machine,libra,cli",
                           "--json", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    folder = tmp_path / "ckpt" / "libra-tiny"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in folder.glob("model-*.safetensors")}
    assert json.loads((folder / "config.json").read_text())["mm_vision_tower"] == "../rad-dino-70-32"
    assert res["machine"]["disk_read_gb_s"] > 0 and res["machine"]["gemm_gflops_bfloat16"] > 0
    lib = res["libra"]
    assert "error" not in lib, lib
    assert lib["new_tokens"] == 3 and lib["dtype"] == "bfloat16"  # the zeroed EOS row: exactly --tokens tokens
    assert lib["peak_rss_beam10_mb"] > 0 and lib["ttft_s"] > 0
    assert res["cli_no_dtype"]["rc"] == 0 and "3 tokens" in res["cli_no_dtype"]["stderr_last"]
    assert res["summary"]["libra"]["peak_rss_over_weights"] > 0
