"""Benchmark: ``libra eval --suite libra`` and ``--suite rexrank`` with scorer models at their REAL sizes,
end to end, against the reference packages run the way RadEval and ReXrank run them; same pairs, same
machine, same run, values compared pair by pair.

Scorer models: random weights at the published architectures, in each package's own format
(``tests.builders.scorers.build_all(real_size=True)``: BERT-base RadGraph / RadGraph-XL archives and
CheXbert, distilbert-base, distilroberta-base, DeBERTa-v3-base RaTE-NER with its SentencePiece tokenizer,
MPNet-base BioLORD), laid out as a Hugging Face hub cache. Pairs: ``make_pairs(--pairs)`` (2,347 = ReXrank's
test set size).

Reference (a transformers-4.57 venv, ``--ref-python``; tests/reference/generate.py lists its packages), each
suite in cold processes:

- ``libra``: the lexical metrics as the original evaluation computed them (``bench_eval.BASELINE``, this
  venv), then RadEval's way: ``F1RadGraph(reward_level="all", model_type="radgraph-xl")`` and
  ``BERTScorer(distilbert-base-uncased, layer 5)`` on the lowercased, cleaned texts (what the Libra table
  scores), ``RaTEScore().compute_score(hyps, refs)`` on the raw texts, each called once on the corpus;
- ``rexrank``: CXR-Report-Metric's ``calc_metric`` (``--cxr-report-metric`` checkout): fast-bleu BLEU-2,
  ``BERTScorer(distilroberta-base, batch_size=256, rescaled)``, CheXbert ``encode.label`` (SembScore) for
  both files, RadGraph annotations (the ``radgraph`` package's ``RadGraph``, as tests/reference does) and
  ``evaluate_radgraph``, the RadCliQ-v1 pickle; plus ``RaTEScore().compute_score`` (ReXrank's seventh
  column runs the package on the corpus too).

libra: ``libra eval REFS PREDS --suite S --no-cache --per-sample FILE`` in a fresh process (``--no-cache``:
nothing from an earlier run is reused). Runs interleave (reference, libra, reference, libra ...) and the
table reports medians. Usage:

    python benchmarks/bench_eval_real.py --ref-python /work/refvenv/bin/python --cxr-report-metric /work/cxrm \\
        --work /work/bigckpt/scorers --pairs 2347 --repeats 2 --json benchmarks/results/bench_eval_real-cpu.json

``--share-ratescore``: both suites' references make the same RaTEScore call on the same pairs; run it once (in the
first suite) and count its seconds and values in both (the 2,347-pair run: both references in full take ~2.6 h here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

REF_HEAD = r"""
import json, os, re, sys, time
work, pairs_path, cxrm, suite, out_path = sys.argv[1:6]
skip = set(sys.argv[6].split(",")) if len(sys.argv) > 6 and sys.argv[6] else set()  # metrics measured elsewhere
os.environ["HF_HOME"] = os.path.join(work, "models", "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["XDG_CACHE_HOME"] = os.path.join(work, "models", "xdg")
import numpy as np
import torch
data = json.load(open(pairs_path)); refs, hyps = data["refs"], data["hyps"]
models = os.path.join(work, "models")
out, secs = {}, {}
def timed(name, fn):
    t0 = time.perf_counter(); out[name] = fn(); secs[name] = time.perf_counter() - t0
def clean(text):  # the original evaluation: lowercase, then clean_text (libra_cli.metrics.text)
    text = text.lower()
    text = re.sub(r"\n+", " ", text); text = re.sub(r"[_-]+", " ", text)
    for p in (r"\(___, __, __\)", r"---, ---, ---", r"\(__, __, ___\)"):
        text = re.sub(p, "", text)
    text = re.sub(r"[_-]+", " ", text); text = re.sub(r"[^\w\s.,:;()\-]", "", text)
    return re.sub(r"\s{2,}", " ", text).strip()
def ratescore():
    from RaTEScore import RaTEScore
    rs = RaTEScore(bert_model=os.path.join(models, "rate-ner"), eval_model=os.path.join(models, "rate-eval"), use_gpu=False)
    return [float(x) for x in rs.compute_score(hyps, refs)]
def run_all(steps):  # in order, each timed, except those measured in another suite's run
    for name, fn in steps:
        if name not in skip:
            timed(name, fn)
    json.dump({"values": out, "seconds": secs}, open(out_path, "w"))
"""

REF_LIBRA = REF_HEAD + r"""
def radgraph():
    from radgraph import F1RadGraph
    f1 = F1RadGraph(reward_level="all", model_type="radgraph-xl", model_cache_dir=os.path.join(models, "radgraph-cache"),
                    cuda=-1)
    c_refs, c_hyps = [clean(r) or "" for r in refs], [clean(h) or "" for h in hyps]
    _, per, _, _ = f1(refs=c_refs, hyps=c_hyps)
    return [[float(x) for x in lst] for lst in per]
def bertscore():
    from bert_score import BERTScorer
    s = BERTScorer(model_type=os.path.join(models, "distilbert"), num_layers=5, batch_size=64, idf=False)
    return [float(x) for x in s.score([clean(h) for h in hyps], [clean(r) for r in refs])[2]]
run_all((("radgraph", radgraph), ("bertscore", bertscore), ("ratescore", ratescore)))
"""

REF_REXRANK = REF_HEAD + r"""
import tempfile
sys.path.insert(0, cxrm)
def bleu2():
    from fast_bleu import BLEU
    prep = lambda t: [w for w in str(t).lower().replace(".", " .").split(" ") if w != ""]
    return [float(BLEU([prep(r)], {"bigram": (0.5, 0.5)}).get_score([prep(h)])["bigram"][0]) for r, h in zip(refs, hyps)]
def bertscore():
    import bert_score
    from bert_score import BERTScorer
    base = os.path.join(os.path.dirname(bert_score.__file__), "rescale_baseline", "en", "distilroberta-base.tsv")
    t = [re.sub(r" +", " ", x) for x in refs]; m = [re.sub(r" +", " ", x) for x in hyps]
    s = BERTScorer(model_type=os.path.join(models, "roberta"), num_layers=5, batch_size=256, lang="en",
                   rescale_with_baseline=True, baseline_path=base, idf=False, idf_sents=t)
    return [float(x) for x in s.score(m, t)[2]]
def semb():
    import pandas as pd
    src = os.path.join(cxrm, "CXRMetric", "CheXbert", "src"); sys.path.insert(0, src)
    cwd = os.getcwd(); os.chdir(src)
    import encode
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame({"study_id": range(len(refs)), "report": refs}).to_csv(tmp + "/gt.csv", index=False)
        pd.DataFrame({"study_id": range(len(hyps)), "report": hyps}).to_csv(tmp + "/pred.csv", index=False)
        ckpt = os.path.join(models, "xdg", "chexbert", "chexbert.pth")
        encode.label(ckpt, tmp + "/gt.csv", tmp + "/gt.pt"); encode.label(ckpt, tmp + "/pred.csv", tmp + "/pred.pt")
        g, p = torch.load(tmp + "/gt.pt"), torch.load(tmp + "/pred.pt")
    os.chdir(cwd)
    return [float((g[k].numpy() * p[k].numpy()).sum() / (np.linalg.norm(g[k].numpy()) * np.linalg.norm(p[k].numpy())))
            for k in range(len(refs))]
def radgraph():
    from radgraph import RadGraph
    from CXRMetric.radgraph_evaluate_model import evaluate_radgraph
    rg = RadGraph(model_type="radgraph", model_cache_dir=os.path.join(models, "radgraph-cache"), cuda=-1)
    empty = {"text": "", "entities": {}}
    def annotate(texts):
        keep = [i for i, t in enumerate(texts) if t.strip()]
        o = rg([texts[i] for i in keep])
        return {str(i): o.get(str(j), empty) for j, i in enumerate(keep)}
    with tempfile.TemporaryDirectory() as tmp:
        gt, pr = annotate(refs), annotate(hyps)
        json.dump({str(i): gt.get(str(i), empty) for i in range(len(refs))}, open(tmp + "/gt.json", "w"))
        json.dump({str(i): pr.get(str(i), empty) for i in range(len(hyps))}, open(tmp + "/pred.json", "w"))
        evaluate_radgraph(tmp + "/gt.json", tmp + "/pred.json", tmp + "/e.json", tmp + "/r.json")
        e, r = json.load(open(tmp + "/e.json")), json.load(open(tmp + "/r.json"))
    return [(e[str(i)][0] + r[str(i)][0]) / 2 for i in range(len(refs))]
def radcliq():
    import pickle, __main__
    from CXRMetric.run_eval import CompositeMetric
    __main__.CompositeMetric = CompositeMetric
    model = pickle.load(open(os.path.join(cxrm, "CXRMetric", "radcliq-v1.pkl"), "rb"))
    x = np.array([[out[c][i] for c in ("radgraph", "bertscore", "semb", "bleu2")] for i in range(len(refs))])
    return [float(v) for v in model.predict(x)]
run_all((("bleu2", bleu2), ("bertscore", bertscore), ("semb", semb), ("radgraph", radgraph), ("radcliq", radcliq),
         ("ratescore", ratescore)))
"""

# libra's per-sample columns for the reference's values
COLUMNS = {
    "libra": {"radgraph": ("RG_E", "RG_ER", "RG_ER_bar"), "bertscore": "Bert_score", "ratescore": "RaTEScore"},
    "rexrank": {"bleu2": "BLEU2_rexrank", "bertscore": "BERTScore", "semb": "SembScore", "radgraph": "RadGraph",
                "radcliq": "RadCliQ-v1", "ratescore": "RaTEScore"},
}


def scorable_pairs(pairs: tuple[list[str], list[str]], n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` pairs whose two reports both have a sentence RaTEScore keeps: the package's corpus call
    drops a sentence-less report and shifts every later pair, so only such pairs compare pair by pair."""
    import contextlib

    from loguru import logger

    logger.disable("PyRuSH")  # its DEBUG records of every token
    with contextlib.redirect_stdout(sys.stderr):
        from RaTEScore.utils import sentence_split

        keep = [(r, h) for r, h in zip(*pairs, strict=True) if sentence_split([r])[0] and sentence_split([h])[0]]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} scorable pairs; ask for fewer")
    return [r for r, _ in keep[:n]], [h for _, h in keep[:n]]


def prepare(work: Path, n: int) -> tuple[Path, Path, Path, Path]:
    """Scorer models (built once), the hub cache, and the pair files."""
    sys.path.insert(0, str(REPO))
    from tests.builders.reports import make_pairs
    from tests.builders.scorers import build_all, install_scorer_hub

    models, hub = work / "models", work / "hub"
    if not (models / "radgraph-cache" / "radgraph-xl" / "weights.th").is_file():
        install_scorer_hub(hub, build_all(models, real_size=True))
    refs, hyps = scorable_pairs(make_pairs(n + n // 5 + 10, seed=0), n)
    pairs = work / f"pairs-{n}.json"
    pairs.write_text(json.dumps({"refs": refs, "hyps": hyps}))
    ref_file, pred_file = work / f"refs-{n}.jsonl", work / f"preds-{n}.jsonl"
    ref_file.write_text("".join(json.dumps({"question_id": str(i), "reference": r}) + "\n" for i, r in enumerate(refs)))
    pred_file.write_text("".join(json.dumps({"question_id": str(i), "prediction": h}) + "\n" for i, h in enumerate(hyps)))
    return pairs, ref_file, pred_file, hub


def run_reference(args: argparse.Namespace, suite: str, pairs: Path, skip: str = "") -> dict[str, Any]:
    """One cold reference run of ``suite`` (the lexical baseline too for the libra suite); ``skip``: metrics
    (comma-separated) whose identical call was already measured in another suite's reference run."""
    out = args.work / f"ref-{suite}.json"
    t0 = time.perf_counter()
    if suite == "libra":
        from benchmarks.bench_eval import BASELINE

        data = json.loads(pairs.read_text())
        lex = args.work / "lexical.json"
        lex.write_text(json.dumps({"refs": data["refs"], "preds": data["hyps"]}))
        subprocess.run([sys.executable, "-c", BASELINE, str(lex)], check=True, capture_output=True, text=True)
    code = REF_LIBRA if suite == "libra" else REF_REXRANK
    proc = subprocess.run([args.ref_python, "-c", code, str(args.work), str(pairs), str(args.cxr_report_metric), suite,
                           str(out), skip], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"reference {suite} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def run_libra(args: argparse.Namespace, suite: str, ref_file: Path, pred_file: Path, hub: Path) -> dict[str, Any]:
    """One cold ``libra eval`` run; its per-pair scores and timings."""
    per = args.work / f"libra-{suite}.jsonl"
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "LIBRA_CACHE": str(args.work / "libra-cache")}
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "libra"), "eval", str(ref_file), str(pred_file), "--suite", suite,
                           "--no-cache", "--json", "--per-sample", str(per), "--strict",
                           "--radgraph-model", "radgraph-xl", *args.libra_args],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"libra eval {suite} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    rows = [json.loads(line) for line in per.read_text().splitlines() if line.strip()]
    return {"wall_s": wall, "timings": result.get("timings"), "rows": rows}


def compare(suite: str, ref: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Per metric: pairs compared, pairs differing by more than 1e-5, the largest difference."""
    import numpy as np

    out = {}
    for name, col in COLUMNS[suite].items():
        ref_vals = ref["values"].get(name)
        if ref_vals is None:
            continue
        cols = col if isinstance(col, tuple) else (col,)
        if len(cols) > 1 and len(ref_vals) == len(cols):  # F1RadGraph: (RG_E list, RG_ER list, RG_ER_bar list)
            ref_vals = [list(v) for v in zip(*ref_vals, strict=True)]
        for k, c in enumerate(cols):
            r = np.array([v[k] if isinstance(v, list) else v for v in ref_vals], dtype=np.float64)
            o = np.array([row.get(c, np.nan) for row in ours["rows"]], dtype=np.float64)
            if len(r) != len(o):  # F1RadGraph leaves out pairs with an empty report from its per-pair lists
                out[c] = {"pairs": int(len(r)), "not_compared": "the package's per-pair list skips empty reports"}
                continue
            if np.nanmax(np.abs(o)) > 2 and np.nanmax(np.abs(r)) <= 2:  # libra's per-sample rows hold raw values
                o = o / 100
            diff = np.abs(r - o)
            out[c] = {"pairs": int(len(r)), "differ_1e-5": int((diff > 1e-5).sum()), "max_abs_diff": float(np.nanmax(diff))}
    return out


def save(path: Path | None, results: dict[str, Any]) -> None:
    """Write the results so far (atomically: a reader never sees half a file)."""
    if path is not None:
        from libra_cli.atomic import write_text_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-python", required=True)
    parser.add_argument("--cxr-report-metric", required=True, type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_eval_real"))
    parser.add_argument("--pairs", type=int, default=2347)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--suites", default="libra,rexrank")
    parser.add_argument("--libra-args", nargs="*", default=[], help="extra flags for libra eval (e.g. --batch-size 32)")
    parser.add_argument("--share-ratescore", action="store_true",
                        help="run the reference's RaTEScore call once (in the first suite) and count its measured seconds "
                             "and values in both suites: both suites make the same package call on the same pairs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    pairs, ref_file, pred_file, hub = prepare(args.work, args.pairs)
    results: dict[str, Any] = {"pairs": args.pairs, "load_before": os.getloadavg(), "suites": {}}
    shared: dict[str, Any] | None = None  # the first reference run's RaTEScore (values, seconds)
    for suite in args.suites.split(","):
        ref_times, libra_times = [], []
        ref = ours = None
        entry: dict[str, Any] = results["suites"].setdefault(suite, {})
        for r in range(args.repeats):
            for side in (("reference", "libra") if r % 2 == 0 else ("libra", "reference")):
                if side == "reference":
                    ref = run_reference(args, suite, pairs, skip="ratescore" if shared is not None else "")
                    if shared is not None:
                        ref["values"]["ratescore"] = shared["values"]
                        ref["seconds"]["ratescore"] = shared["seconds"]
                        ref["wall_s"] += shared["seconds"]
                        entry["reference_ratescore"] = ("measured once, in the first suite's reference run, and added: "
                                                        "the same RaTEScore().compute_score call on the same pairs")
                    elif args.share_ratescore and "ratescore" in ref["seconds"]:
                        shared = {"values": ref["values"]["ratescore"], "seconds": ref["seconds"]["ratescore"]}
                    ref_times.append(ref["wall_s"])
                else:
                    ours = run_libra(args, suite, ref_file, pred_file, hub)
                    libra_times.append(ours["wall_s"])
                print(f"{suite} {side}: {(ref_times if side == 'reference' else libra_times)[-1]:.1f} s", file=sys.stderr)
                entry.update({"reference_s": ref_times, "libra_s": libra_times})
                save(args.json, results)  # a stopped run keeps what it measured
        assert ref is not None and ours is not None
        entry.update({
            "reference_median_s": statistics.median(ref_times), "libra_median_s": statistics.median(libra_times),
            "speedup": statistics.median(ref_times) / statistics.median(libra_times),
            "reference_parts_s": ref["seconds"], "libra_timings_s": ours["timings"], "equal": compare(suite, ref, ours)})
        save(args.json, results)
    results["load_after"] = os.getloadavg()
    print(f"{args.pairs} pairs, real-size random scorer models, CPU ({os.cpu_count()} cores); medians of {args.repeats}")
    print(f"{'suite':<10}{'reference s':>14}{'libra s':>10}{'speedup':>9}  values")
    for suite, s in results["suites"].items():
        worst = max((v["max_abs_diff"] for v in s["equal"].values() if "max_abs_diff" in v), default=float("nan"))
        differ = sum(v.get("differ_1e-5", 0) for v in s["equal"].values())
        print(f"{suite:<10}{s['reference_median_s']:>14.1f}{s['libra_median_s']:>10.1f}{s['speedup']:>8.2f}x  "
              f"{differ} pair values differ > 1e-5 (max {worst:.2e})")
    save(args.json, results)


if __name__ == "__main__":
    main()
