"""CCD from the outside: ``libra infer`` / ``libra batch`` flags, ``libra serve``'s toggle and baseline view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from libra_cli.cli import app
from libra_cli.errors import InputError
from libra_cli.generation import CCDSettings, GenerationSettings, Sample, generate
from tests.conftest import CXR, FIXTURES

MODEL = str(FIXTURES / "tiny-libra-tac")
CUR, PRIOR = str(CXR / "current.jpg"), str(CXR / "prior.jpg")
LABELS = {"Cardiomegaly": 0.8, "Edema": 0.3, "Pleural Effusion": 0.6, "Frontal": 0.9, "Lateral": 0.1}


@pytest.fixture(scope="module")
def loaded():
    from libra_cli.checkpoint import load_model

    return load_model(MODEL, device="cpu", dtype="float32")


@pytest.fixture()
def labels_file(tmp_path: Path) -> str:
    p = tmp_path / "labels.json"
    p.write_text(json.dumps(LABELS))
    return str(p)


def test_infer_ccd_prints_the_api_answer(loaded, labels_file) -> None:
    args = ["infer", "-m", MODEL, CUR, PRIOR, "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "8",
            "--decoding", "ccd", "--ccd-labels", labels_file, "--ccd-alpha", "0.7", "--ccd-gamma", "5"]
    out = CliRunner().invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.stdout)
    settings = GenerationSettings(max_new_tokens=8, decoding="ccd", ccd_labels=labels_file, ccd_alpha=0.7, ccd_gamma=5)
    api = generate(loaded, [Sample(CUR, PRIOR)], settings)[0]
    assert d["token_ids"] == api.token_ids and d["settings"]["ccd_alpha"] == 0.7
    assert d["ccd"]["guide"] == "Attention to the following clinical instructions: Cardiomegaly; Pleural Effusion. View type: Frontal."
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and plain.stdout.strip() == api.text


@pytest.mark.parametrize("extra,msg", [
    (["--ccd-alpha", "1.5"], "--ccd-alpha must be in [0, 1]"),
    (["--ccd-gamma", "0"], "--ccd-gamma must be > 0"),
    (["--ccd-labels", "/nonexistent/labels.json"], "does not exist"),
    (["--num-beams", "2", "--temperature", "0.5"], "CCD beam search is deterministic"),
])
def test_bad_ccd_flags_fail_before_loading(extra, msg) -> None:
    out = CliRunner().invoke(app, ["infer", "-m", "/nonexistent-model", CUR, "--decoding", "ccd", *extra])
    assert isinstance(out.exception, InputError) and msg in str(out.exception)  # not the model's "not found"


def test_bad_ccd_flag_exit_code(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "libra_cli", "infer", "-m", MODEL, CUR, "--decoding", "ccd",
                          "--ccd-threshold", "2"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 2 and "--ccd-threshold must be in [0, 1]" in out.stderr and "Traceback" not in out.stderr


def test_batch_ccd_answers_equal_single_generation(loaded, tmp_path: Path) -> None:
    qs = [{"question_id": "a", "image": CUR, "text": "Describe the heart."},
          {"question_id": "b", "image": PRIOR},
          {"question_id": "c", "image": [CUR, PRIOR]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in qs))
    labels = tmp_path / "labels.csv"
    labels.write_text("question_id,Edema,Cardiomegaly,Frontal,Lateral\na,0.7,0.2,0.9,0.1\nb,0.1,0.8,0.3,0.7\nc,0.6,0.6,,\n")
    out = CliRunner().invoke(app, ["batch", "-m", MODEL, str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "a.jsonl"),
                                   "--device", "cpu", "--dtype", "float32", "--max-new-tokens", "8", "--batch-size", "3",
                                   "--decoding", "ccd", "--ccd-labels", str(labels)])
    assert out.exit_code == 0, out.output
    answers = {json.loads(line)["question_id"]: json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()}
    settings = GenerationSettings(max_new_tokens=8, decoding="ccd", ccd_labels=str(labels))
    for q in qs:
        cur, prior = q["image"] if isinstance(q["image"], list) else (q["image"], None)
        alone = generate(loaded, [Sample(cur, prior, q.get("text"), id=q["question_id"])], settings)[0]
        assert answers[q["question_id"]]["text"] == alone.text
        assert answers[q["question_id"]]["metadata"]["settings"]["decoding"] == "ccd"


def test_serve_ccd_with_baseline(loaded, labels_file) -> None:
    from libra_cli.serve.server import (
        CCDOptions,
        ModelCache,
        ServeOptions,
        Server,
        decoding_settings,
        with_ccd,
    )

    server = Server(ServeOptions(models=[MODEL]), cache=ModelCache(loader=lambda k: loaded))
    base = decoding_settings("Greedy", 8, 0.7, 0.9, 0, 3, 1.0, -1)
    assert with_ccd(base, CCDOptions(enabled=False)) is base
    s = with_ccd(base, CCDOptions(True, CCDSettings(0.5, 0.5, 10, 0.5, "densenet", labels_file)))
    updates = list(server.run(MODEL, CUR, PRIOR, None, None, s, compare=True))
    final = updates[-1]
    assert final.done and final.error is None, final.error
    assert final.text == generate(loaded, [Sample(CUR, PRIOR)], s)[0].text
    assert final.baseline == generate(loaded, [Sample(CUR, PRIOR)], base)[0].text
    assert "CCD guidance: Attention to the following clinical instructions: Cardiomegaly" in final.status
    assert "CCD (alpha 0.5" in Path(final.download).read_text()
    with pytest.raises(Exception, match="--ccd-beta must be in"):
        with_ccd(base, CCDOptions(True, CCDSettings(beta=2.0)))


def test_serve_page_builds_with_ccd_controls(loaded) -> None:
    pytest.importorskip("gradio")
    from libra_cli.serve.page import build_app
    from libra_cli.serve.server import CCDOptions, ModelCache, ServeOptions, Server

    opts = ServeOptions(models=[MODEL], ccd=CCDOptions(enabled=True, settings=CCDSettings(expert="medsiglip"), compare=True))
    demo = build_app(Server(opts, cache=ModelCache(loader=lambda k: loaded)))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"ccd-on", "ccd-alpha", "ccd-beta", "ccd-gamma", "ccd-expert", "ccd-compare", "baseline"} <= ids


def test_unavailable_expert_fails_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # as on a machine without it
    out = CliRunner().invoke(app, ["infer", "-m", "/nonexistent-model", CUR, "--decoding", "ccd"])
    assert isinstance(out.exception, InputError) and "pip install torchxrayvision" in str(out.exception)
