"""``libra demo``: the bundled pair on the bundled model, offline, labelled as a demo, same text as libra infer."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_equals_infer_on_the_bundled_files() -> None:
    from libra_cli.demo import CURRENT, DEMO_MODEL, PRIOR

    demo = subprocess.run([sys.executable, "-m", "libra_cli", "demo", "--json", "--max-new-tokens", "16"],
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=300)
    assert demo.returncode == 0, demo.stderr
    d = json.loads(demo.stdout)
    assert "cannot read X-rays" in d["notice"] and d["new_tokens"] > 0
    infer = subprocess.run([sys.executable, "-m", "libra_cli", "infer", "-m", str(DEMO_MODEL), str(CURRENT), str(PRIOR),
                            "--max-new-tokens", "16", "--device", "cpu", "--dtype", "float32"],
                           capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr
    assert infer.stdout.strip() == d["text"]
