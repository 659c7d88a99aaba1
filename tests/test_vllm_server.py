"""``libra serve --engine vllm --api``: vLLM's OpenAI server on loopback answers like ``libra infer``.

The server is started as a subprocess on 127.0.0.1 (a free port), asked through the ``openai``
client with the two images as image parts of one chat message, and stopped by its process group.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.vllm_support import make_models, vllm_importable

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not vllm_importable(), reason="vLLM is not installed")]

MAX_NEW = 24
START_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def _wait_healthy(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the vLLM server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    pytest.fail(f"the vLLM server did not come up in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Any:
    root = tmp_path_factory.mktemp("vllm-server")
    model = make_models(root, fixtures_dir)["tac"]
    port = _free_port()
    log = root / "server.log"
    cmd = [sys.executable, "-m", "libra_cli", "serve", "--engine", "vllm", "--api", "-m", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env=os.environ | {"HF_HUB_OFFLINE": "1"})
    try:
        _wait_healthy(proc, port, log)
        yield {"model": model, "port": port}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_openai_client_two_images_equal_libra_infer(server: dict[str, Any], cxr_dir: Path) -> None:
    from openai import OpenAI

    from libra_cli.checkpoint.load import load_model
    from libra_cli.generation import GenerationSettings, generate_report

    cur, prior = cxr_dir / "current.jpg", cxr_dir / "prior.jpg"
    client = OpenAI(base_url=f"http://127.0.0.1:{server['port']}/v1", api_key="unused")
    model_name = str(server["model"])
    lm = load_model(model_name, device="cpu", dtype="float32")
    settings = GenerationSettings(max_new_tokens=MAX_NEW)
    question = "Provide a detailed description of the findings in the radiology image."
    cases = [([cur, prior], question, prior), ([cur], question, None), ([prior, cur], "", cur),
             ([cur, prior], "Has the effusion changed?", prior)]
    for images, text, ref_prior in cases:
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": _data_url(p)}} for p in images]
        if text:
            content.append({"type": "text", "text": text})
        reply = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": content}],
                                               temperature=0, max_tokens=MAX_NEW)
        expected = generate_report(lm, images[0], ref_prior, query=text or None, settings=settings)
        got = (reply.choices[0].message.content or "").strip()
        # Pinned difference (docs/engines.md): vLLM's streaming detokenizer holds back a reply's
        # unfinished UTF-8 byte sequence and never emits it at the end, so where libra's text ends
        # in U+FFFD the API's text lacks those characters; the token ids are the same.
        assert got == expected.text or got == expected.text.rstrip("\ufffd").rstrip() != expected.text, (images, text)
        assert reply.usage.completion_tokens == len(expected.token_ids)
    models = client.models.list()
    assert [m.id for m in models.data] == [model_name]


def test_web_page_backend_streams_from_the_api(server: dict[str, Any], cxr_dir: Path) -> None:
    """``libra serve --api-url``: the page's handler sends the study to the vLLM server, same text."""
    from libra_cli.checkpoint.load import load_model
    from libra_cli.generation import GenerationSettings, generate_report
    from libra_cli.serve.server import ServeOptions
    from libra_cli.serve.vllm import api_server

    cur, prior = cxr_dir / "current.jpg", cxr_dir / "prior.jpg"
    handler = api_server(ServeOptions(), f"http://127.0.0.1:{server['port']}/v1")
    assert handler.choices == [str(server["model"])]
    settings = GenerationSettings(max_new_tokens=MAX_NEW)
    updates = list(handler.run(None, str(cur), str(prior), "", "Dyspnea.", settings))
    assert updates[-1].done and updates[-1].error is None and len(updates) > 2  # streamed
    lm = load_model(str(server["model"]), device="cpu", dtype="float32")
    expected = generate_report(lm, cur, prior, context="Dyspnea.", settings=settings).text
    got = updates[-1].text
    assert got == expected or got == expected.rstrip("\ufffd").rstrip() != expected  # pinned, see above
    assert Path(updates[-1].download).read_text().startswith("FINDINGS")
    beams = list(handler.run(None, str(cur), None, "", "", GenerationSettings(num_beams=2)))
    assert beams[-1].error and "beam search" in beams[-1].error

