"""Benchmark: ``libra eval`` lexical metrics vs the original evaluate-style computation, cold processes.

Each side runs in a fresh Python process (imports, NLTK data loading and all) on the same 2,000
MIMIC-like pairs:

- baseline: what the original ``evaluate_report`` did through HF evaluate, one metric after another
  (``import evaluate`` included when the package is installed; its metric scripts cannot be fetched
  offline, so their computations are inlined with the same packages):
  sacrebleu BLEU for max_order 1..4 (4 passes), rouge_score with evaluate's default four rouge types
  and its BootstrapAggregator, NLTK ``word_tokenize`` + ``single_meteor_score`` per pair (WordNet via
  ``nltk.corpus.wordnet``), and the temporal F1 loop;
- libra: ``libra_cli.metrics.evaluate_reports(refs, preds)`` (the same four metric families).

Prints both wall times, the ratio, and checks that the numbers agree.
Usage: ``python benchmarks/bench_eval.py [--pairs 2000] [--repeats 1] [--json benchmarks/results/bench_eval-cpu.json]``
(install ``evaluate==0.4.6`` for a baseline that pays its import, as the original did)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASELINE = r"""
import json, re, sys, time
t0 = time.perf_counter()
try:  # the original radiology_report.py imports HF evaluate (which imports datasets, pandas, ...)
    import evaluate  # noqa: F401
    HAVE_EVALUATE = True
except ImportError:
    HAVE_EVALUATE = False
import numpy as np
import sacrebleu
from nltk import word_tokenize
from nltk.translate import meteor_score
from rouge_score import rouge_scorer, scoring

data = json.load(open(sys.argv[1]))

def clean_text(text):
    text = re.sub(r'\n+', ' ', text)
    text = re.sub(r'[_-]+', ' ', text)
    text = re.sub(r'\(___, __, __\)', '', text)
    text = re.sub(r'---, ---, ---', '', text)
    text = re.sub(r'\(__, __, ___\)', '', text)
    text = re.sub(r'[_-]+', ' ', text)
    text = re.sub(r'[^\w\s.,:;()\-]', '', text)
    return re.sub(r'\s{2,}', ' ', text).strip()

refs = [clean_text(t.lower()) for t in data["refs"]]
preds = [clean_text(t.lower()) for t in data["preds"]]
out = {}
for n in range(1, 5):
    out[f"BLEU{n}"] = sacrebleu.metrics.BLEU(max_ngram_order=n, smooth_method="none", force=True).corpus_score(preds, [refs]).score / 100
scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
agg = scoring.BootstrapAggregator()
per_f = []
for r, p in zip(refs, preds):
    s = scorer.score(r, p)
    per_f.append(s["rougeL"].fmeasure)
    agg.add_scores(s)
np.random.seed(0)
agg.aggregate()
out["ROUGE-L"] = float(np.mean(per_f))  # compared with libra's deterministic mean
out["METEOR"] = float(np.mean([meteor_score.single_meteor_score(word_tokenize(r), word_tokenize(p)) for r, p in zip(refs, preds)]))
KW = ["bigger", "change", "cleared", "constant", "decrease", "decreased", "decreasing", "elevated", "elevation",
      "enlarged", "enlargement", "enlarging", "expanded", "greater", "growing", "improved", "improvement", "improving",
      "increase", "increased", "increasing", "larger", "new", "persistence", "persistent", "persisting", "progression",
      "progressive", "reduced", "removal", "resolution", "resolved", "resolving", "smaller", "stability", "stable",
      "stably", "unchanged", "unfolded", "worse", "worsen", "worsened", "worsening", "unaltered"]
def ents(t):
    t = clean_text(t)
    return {k for k in KW if re.search(r"\b" + k + r"\b", t)}
eps, f1s = 1e-10, []
for r, p in zip(refs, preds):
    rs, ps = ents(r), ents(p)
    if not rs:
        f1s.append(1.0 if not ps else eps)
        continue
    tp = len(rs & ps)
    pr, rc = (tp + eps) / (len(ps) + eps), (tp + eps) / (len(rs) + eps)
    f1s.append(2 * pr * rc / (pr + rc + eps))
out["Temporal_entity_score"] = float(np.mean(f1s))
print(json.dumps({"raw": out, "inner_s": time.perf_counter() - t0, "evaluate_imported": HAVE_EVALUATE}))
"""

LIBRA = r"""
import json, sys, time
t0 = time.perf_counter()
from libra_cli.metrics import evaluate_reports
data = json.load(open(sys.argv[1]))
res = evaluate_reports(data["refs"], data["preds"])
print(json.dumps({"raw": res["raw"], "inner_s": time.perf_counter() - t0}))
"""


def cold_run(code: str, data_path: Path) -> tuple[float, dict]:
    """Wall time of a fresh interpreter running ``code`` (includes interpreter start and imports)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, str(data_path)], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1, help="alternate runs of each side; the best is kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tests.builders.reports import make_pairs

    refs, preds = make_pairs(args.pairs, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "pairs.json"
        data_path.write_text(json.dumps({"refs": refs, "preds": preds}))
        base_times, libra_times = [], []
        for _ in range(args.repeats):
            bt, base = cold_run(BASELINE, data_path)
            lt, ours = cold_run(LIBRA, data_path)
            base_times.append(bt)
            libra_times.append(lt)
    worst = max(abs(base["raw"][k] - ours["raw"][k]) for k in base["raw"])
    b, lib = min(base_times), min(libra_times)
    print(f"{args.pairs} pairs, lexical metrics (BLEU-1..4, METEOR, ROUGE-L, temporal F1), cold process each")
    how = "imports evaluate" if base.get("evaluate_imported") else "evaluate not installed: its import cost left out"
    print(f"baseline (evaluate-style, sequential; {how}): {b:7.2f} s")
    print(f"libra eval (evaluate_reports):         {lib:7.2f} s")
    print(f"speed-up: {b / lib:.2f}x   (max |difference| of raw scores: {worst:.2e})")
    if args.json:
        import os
        import platform

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "pairs": args.pairs, "repeats": args.repeats, "baseline_s": base_times, "libra_s": libra_times,
            "best_baseline_s": b, "best_libra_s": lib, "speedup": b / lib, "max_raw_difference": worst,
            "baseline_imports_evaluate": bool(base.get("evaluate_imported")), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "python": platform.python_version(),
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
