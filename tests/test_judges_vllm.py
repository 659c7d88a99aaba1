"""The vLLM and OpenAI judge engines give the judgements the packages (and libra's transformers engine) give.

On the tiny random judges of ``tests/test_judges_reference.py``, in float32: ``--judge-engine vllm``
(prefix caching, the judge's token ids) and ``--judge-engine openai`` against vLLM's own OpenAI server
(the server ``libra serve --engine vllm --api`` runs, here on a plain text judge) return the very
responses and scores the reference packages returned. Run by CI's vLLM step (``pytest -m vllm``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_vllm_server import _free_port, _wait_healthy
from tests.vllm_support import vllm_importable

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_importable(), reason="vLLM is not installed")]

REF = json.loads((Path(__file__).parent / "data" / "judge_reference.json").read_text(encoding="utf-8"))
GREEN_ID, CRIMSON_ID = "StanfordAIMI/GREEN-radllama2-7b", "google/medgemma-4b-it"
N = 8  # pairs per judge (one GREEN batch of 8: the package's max_length budget)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Any:
    from tests.builders.judges import build_judges

    root = tmp_path_factory.mktemp("judges-vllm")
    build_judges(root, shared_dir / "fixtures" / "tokenizer")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIBRA_CACHE", str(root / "libra-cache"))  # MedGemma's text-only copy for vLLM goes here
    yield root / "hf" / "hub"
    mp.undo()


def _judge(judge: str, model: str, name: str, hub: Path, **kw: Any) -> Any:
    from libra_cli.metrics.cache import OutputCache
    from libra_cli.metrics.judges.run import JudgeOptions, run

    pairs = REF["pairs"][name]
    return run(judge, pairs["refs"][:N], pairs["hyps"][:N], JudgeOptions(model=model, dtype="float32", progress=False, **kw),
               OutputCache(None), hub)


def test_vllm_engine_equals_the_packages(hub: Path) -> None:
    green = _judge("green", GREEN_ID, "radllama2", hub, engine="vllm")
    assert green.responses == REF["radllama2"]["responses"][:N]
    assert [r.score for r in green.results] == REF["radllama2"]["scores"][:N]
    crimson = _judge("crimson", CRIMSON_ID, "crimson_guidelines", hub, engine="vllm")  # Gemma 3 as its text-only LM
    assert crimson.responses == REF["crimson_guidelines"]["responses"][:N]
    assert [r.score for r in crimson.results] == REF["crimson_guidelines"]["scores"][:N]


@pytest.fixture(scope="module")
def server(hub: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """vLLM's OpenAI server (the module ``libra serve --engine vllm --api`` runs) on the tiny GREEN judge."""
    from libra_cli.metrics.judges.run import JudgeOptions, resolve

    folder = resolve("green", JudgeOptions(model=GREEN_ID), hub)[0]
    port = _free_port()
    log = tmp_path_factory.mktemp("judge-server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name", GREEN_ID,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048",
           "--enable-prefix-caching", "--generation-config", "vllm", "--enforce-eager", "--disable-log-stats",
           "--kv-cache-memory-bytes", str(1 << 30), "--gpu-memory-utilization", "0.2"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        _wait_healthy(proc, port, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_openai_engine_against_vllm_s_server_equals_the_package(hub: Path, server: str) -> None:
    res = _judge("green", GREEN_ID, "radllama2", hub, engine="openai", url=server)
    assert res.responses == REF["radllama2"]["responses"][:N]
    assert [r.score for r in res.results] == REF["radllama2"]["scores"][:N]
    assert res.stats["engine"] == "openai" and res.stats["generated"] == N
