"""``libra eval`` with scorer models: offline behaviour, suites, inputs, download against a cache layout.

Real subprocesses; an empty or tiny Hugging Face cache in a temp folder (never the network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HAVE_MODEL_PKGS = all(importlib.util.find_spec(m) is not None for m in ("radgraph", "f1chexbert", "bert_score"))
MODEL_METRICS = ("bertscore", "bertscore_rexrank", "radgraph", "radgraph_combined", "semb", "chexbert", "ratescore", "radcliq")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "libra_cli", "eval", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def pairs(tmp_path: Path) -> tuple[Path, Path]:
    refs = tmp_path / "refs.jsonl"
    preds = tmp_path / "preds.jsonl"
    rows = [("a", "No pleural effusion. Heart size is normal.", "Heart size is normal. No effusion."),
            ("b", "Mild pulmonary edema, unchanged from ___.", "Pulmonary edema has worsened."),
            ("c", "The lungs are clear.", "")]
    refs.write_text("".join(json.dumps({"question_id": q, "reference": r}) + "\n" for q, r, _ in rows))
    preds.write_text("".join(json.dumps({"question_id": q, "text": p}) + "\n" for q, _, p in rows))
    return refs, preds


@pytest.fixture
def empty_cache(tmp_path: Path) -> dict[str, str]:
    """No model anywhere, and the hub NOT marked offline: nothing may try the network."""
    env = {"HF_HOME": str(tmp_path / "hf"), "LIBRA_CACHE": str(tmp_path / "libra")}
    env.pop("HF_HUB_OFFLINE", None)
    return {**env, "HF_HUB_OFFLINE": "0"}


def test_every_model_metric_fails_at_once_naming_the_download_command(pairs, empty_cache) -> None:  # noqa: ANN001
    r, p = pairs
    for metric in MODEL_METRICS:
        t0 = time.perf_counter()
        out = run(str(r), str(p), "--metrics", metric, "--json", env=empty_cache)
        seconds = time.perf_counter() - t0
        assert out.returncode == 2, (metric, out.stderr)
        assert out.stdout == ""  # stdout is data: nothing there on failure
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2, out.stderr
        needle = "libra eval download" if HAVE_MODEL_PKGS or metric.startswith("bertscore") else "pip install"
        assert needle in out.stderr or "pip install" in out.stderr, (metric, out.stderr)
        print(f"{metric}: failed in {seconds:.1f} s")  # reported by -s; no timing assertion in tests


def test_suite_libra_without_models_gives_the_lexical_part_and_names_what_was_skipped(pairs, empty_cache) -> None:  # noqa: ANN001
    r, p = pairs
    out = run(str(r), str(p), "--suite", "libra", "--json", env=empty_cache)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert {"BLEU1", "BLEU4", "METEOR", "ROUGE-L", "Temporal_entity_score"} <= set(res["scores"])
    assert set(res["skipped"]) == {"bertscore", "ratescore", "radgraph"}
    assert all("libra eval download" in why or "pip install" in why for why in res["skipped"].values())
    table = run(str(r), str(p), "--suite", "libra", env=empty_cache)
    assert table.returncode == 0 and "skipped radgraph" in table.stdout and "BLEU4" in table.stdout
    strict = run(str(r), str(p), "--suite", "libra", "--strict", env=empty_cache)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr


def test_a_suite_that_scores_nothing_is_an_error_naming_the_download(pairs, empty_cache) -> None:  # noqa: ANN001
    r, p = pairs
    out = run(str(r), str(p), "--suite", "chexbert", env=empty_cache)
    assert out.returncode == 2 and out.stdout == "", (out.stdout, out.stderr)
    assert "--suite chexbert scored nothing" in out.stderr and "Traceback" not in out.stderr
    assert "libra eval download" in out.stderr or "pip install" in out.stderr, out.stderr


def test_batch_output_and_rexrank_submission_are_read_as_one_file(tmp_path: Path) -> None:
    batch = tmp_path / "answers.jsonl"
    batch.write_text("".join(json.dumps({"question_id": q, "text": t, "metadata": {"reference": ref, "settings": {}}}) + "\n"
                             for q, t, ref in [("1", "No effusion.", "No pleural effusion."), ("2", "Edema.", "Mild edema.")]))
    out = run(str(batch), "--metrics", "bleu,rouge", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["n"] == 2
    sub = tmp_path / "prediction.json"
    sub.write_text(json.dumps({"5005": {"section_findings": "Lungs clear.", "section_impression": None,
                                        "model_prediction": "Lungs are clear."},
                               "5006": {"section_findings": "Small effusion.", "section_impression": "Effusion.",
                                        "model_prediction": "Effusion."}}))
    out = run(str(sub), "--metrics", "bleu2_rexrank", "--json", "--per-sample", str(tmp_path / "ps.jsonl"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "ps.jsonl").read_text().splitlines()]
    assert rows[0]["reference"] == "Findings: Lungs clear. Impression: None"  # ReXrank's split_json
    refs = tmp_path / "gt.json"
    refs.write_text(json.dumps({"5005": {"report": "Findings: Lungs clear."}, "5006": {"report": "Impression: Effusion."}}))
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"5005": "Lungs are clear.", "5006": "Effusion."}))
    out = run(str(refs), str(preds), "--metrics", "bleu2_rexrank", "--format", "rexrank", "--json")
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["formatted"]) == {"BLEU"}


def test_download_reads_the_cache_layout_and_never_the_network_when_all_is_cached(tmp_path: Path) -> None:
    from tests.builders.scorers import build_bert, folder_files, install_in_hf_cache, wordpiece_vocab

    hub = tmp_path / "hf" / "hub"
    bert = build_bert(tmp_path / "bert", wordpiece_vocab(["no effusion"]), seed=0)
    pth = tmp_path / "chexbert.pth"
    pth.write_bytes(b"not read by download")
    install_in_hf_cache(hub, "StanfordAIMI/RRG_scorers", {"chexbert.pth": pth}, commit="a" * 40)
    install_in_hf_cache(hub, "bert-base-uncased", folder_files(bert), commit="b" * 40)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = run("download", "--model", "chexbert", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("cached") == 2 and "aaaaaaaaaaaa" in out.stderr
    missing = run("download", "--suite", "chexbert", "--model", "ratescore", env=env)
    assert missing.returncode == 2 and "HF_HUB_OFFLINE" in missing.stderr and "RaTE-NER" in missing.stderr
    listed = run("download", "--suite", "rexrank", "--list", env=env)
    assert listed.returncode == 0 and "missing" in listed.stderr and "distilroberta-base" in listed.stderr


@pytest.mark.skipif(not HAVE_MODEL_PKGS, reason="metrics-model extra not installed")
def test_json_stays_parseable_with_radgraph_and_rescoring_only_scores_changed_lines(tmp_path: Path, pairs) -> None:  # noqa: ANN001
    """RadGraph prints 'Using device' on stdout in the package; libra keeps stdout for the JSON."""
    from tests.builders.scorers import build_all, folder_files, install_in_hf_cache

    tiny = build_all(tmp_path / "tiny")
    hub = tmp_path / "hf" / "hub"
    install_in_hf_cache(hub, "StanfordAIMI/RRG_scorers", {"radgraph.tar.gz": tiny["radgraph_archive"],
                                                         "chexbert.pth": tiny["chexbert"]})
    install_in_hf_cache(hub, "bert-base-uncased", folder_files(tiny["bert"]))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "LIBRA_CACHE": str(tmp_path / "libra")}
    r, p = pairs
    out = run(str(r), str(p), "--metrics", "radgraph,chexbert", "--radgraph-model", "radgraph", "--json", env=env)
    assert out.returncode == 0, out.stderr
    assert "Using device" not in out.stderr and "Loading weights" not in out.stderr, out.stderr  # package chatter
    first = json.loads(out.stdout)
    assert {"RG_E", "RG_ER", "RG_ER_bar", "CheXbert_F1"} <= set(first["scores"])
    assert first["models"]["radgraph:radgraph"]["StanfordAIMI/RRG_scorers"] == "0" * 40
    # change one prediction: the cached outputs of the other reports are reused, the scores stay exact
    lines = p.read_text().splitlines()
    lines[0] = json.dumps({"question_id": "a", "text": "Heart size is enlarged."})
    p.write_text("\n".join(lines) + "\n")
    again = run(str(r), str(p), "--metrics", "radgraph,chexbert", "--radgraph-model", "radgraph", "--json", env=env)
    fresh = run(str(r), str(p), "--metrics", "radgraph,chexbert", "--radgraph-model", "radgraph", "--json", "--no-cache",
                env=env)
    assert json.loads(again.stdout)["raw"] == json.loads(fresh.stdout)["raw"]


def test_cache_scores_only_new_texts(tmp_path: Path) -> None:
    from libra_cli.metrics.cache import OutputCache, text_key

    cache = OutputCache(tmp_path / "c.sqlite")
    calls: list[list[str]] = []

    def fn(batch: list[str]) -> list[int]:
        calls.append(batch)
        return [len(t) for t in batch]

    texts = ["a", "bb", "a", "ccc"]
    assert cache.compute("ns", [text_key(t) for t in texts], texts, fn) == [1, 2, 1, 3]
    texts[1] = "dddd"
    assert cache.compute("ns", [text_key(t) for t in texts], texts, fn) == [1, 4, 1, 3]
    assert calls == [["a", "bb", "ccc"], ["dddd"]]
    assert cache.compute("other", [text_key("a")], ["a"], fn) == [1] and calls[-1] == ["a"]  # namespaces are separate
