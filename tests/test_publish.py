"""Model cards and ``libra push`` against a loopback mock of the hub's upload API (never the network)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import FIXTURES


class MockHub(BaseHTTPRequestHandler):
    """The four calls ``create_repo`` + ``upload_folder`` make; every file is accepted as a regular upload."""

    repos: dict[str, dict[str, bytes]] = {}
    calls: list[str] = []

    def log_message(self, *a: object) -> None:  # quiet
        pass

    def _json(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        self.calls.append(f"POST {path}")
        if self.headers.get("authorization") != "Bearer hf_test":
            return self._json(401, {"error": "Invalid credentials"})
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req.get('organization') or 'me'}/{req['name']}"
            self.repos.setdefault(repo, {})
            return self._json(200, {"url": f"http://{self.headers['Host']}/{repo}", "name": repo})
        if path == "/api/validate-yaml":  # the hub checks the card's metadata block
            import yaml

            content = json.loads(body)["content"]
            meta = yaml.safe_load(content.split("---")[1])
            ok = isinstance(meta, dict) and isinstance(meta.get("tags"), list)
            return self._json(200 if ok else 400, {"errors": [] if ok else [{"message": "bad card metadata"}]})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                              for f in files]})
        if "/commit/" in path:
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.repos[repo][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return self._json(200, {"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{'a' * 40}",
                                    "commitOid": "a" * 40})
        return self._json(404, {"error": f"mock has no {path}"})


@pytest.fixture
def hub():  # noqa: ANN201
    server = ThreadingHTTPServer(("127.0.0.1", 0), MockHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    MockHub.repos.clear()
    MockHub.calls.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _push(endpoint: str, *args: str, token: str = "hf_test") -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_TOKEN=token, HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
    return subprocess.run([sys.executable, "-m", "libra_cli", "push", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_push_uploads_what_a_user_needs_with_a_card(hub: str, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    shutil.copytree(FIXTURES / "tiny-libra-tac", folder)
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"x" * 100)
    (folder / "optimizer.pt").write_bytes(b"x")
    (folder / ".staging-checkpoint-4").mkdir()
    res = _push(hub, str(folder), "me/libra-tiny")
    assert res.returncode == 0, res.stderr
    uploaded = MockHub.repos["me/libra-tiny"]
    assert {"config.json", "model.safetensors", "tokenizer.model", "README.md"} <= set(uploaded)
    assert not [p for p in uploaded if "checkpoint-" in p or "optimizer" in p or p.startswith(".")]
    assert uploaded["model.safetensors"] == (FIXTURES / "tiny-libra-tac" / "model.safetensors").read_bytes()
    card = uploaded["README.md"].decode()
    assert "Research use only" in card and "libra infer --model me/libra-tiny" in card
    assert "MB" in res.stderr and res.stdout.strip() == f"{hub}/me/libra-tiny"


def test_push_refuses_bad_folders_and_bad_tokens(hub: str, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = _push(hub, str(tmp_path / "empty"), "me/x")
    assert res.returncode == 2 and "holds no model weights" in res.stderr and not MockHub.calls
    shutil.copytree(FIXTURES / "tiny-libra-tac", tmp_path / "run")
    res = _push(hub, str(tmp_path / "run"), "me/x", token="hf_wrong")
    assert res.returncode == 2 and "hf auth login" in res.stderr and "Traceback" not in res.stderr


def test_card_says_what_the_checkpoint_is(tmp_path: Path) -> None:
    from libra_cli.checkpoint.card import CardFacts, write_model_card

    shutil.copytree(FIXTURES / "tiny-libra-tac", tmp_path / "m")
    facts = CardFacts(title="my-libra", kind="lora", base_model="X-iZhang/libra-v1.0-7b",
                      how_made="`libra train finetune` (4 steps)", recipe={"learning_rate": 2e-4, "lora_r": 128},
                      data={"training data": "train.json (8 records)"}, metrics={"BLEU4": 12.5, "loss": 1.25})
    text = write_model_card(tmp_path / "m", facts, repo="me/my-libra").read_text()
    head = text.split("---")[1]
    assert "base_model: X-iZhang/libra-v1.0-7b" in head and "license:" in head and "- radiology" in head
    assert "--model-base X-iZhang/libra-v1.0-7b" in text and "| lora_r | 128 |" in text
    assert "| BLEU4 | 12.5 |" in text and "TAC" in text and "Research use only" in text
