"""Benchmark: model-based metrics, reports/s per metric: libra (models loaded once, batched, shared)
against the reference packages called one report pair at a time, in the same run.

The reference packages need transformers 4.x, so they run in a second venv (``--ref-python``; see
``tests/reference/generate.py`` for its install lines); both sides score the same pairs with the same
scorer models: the real ones when ``--hub-cache`` holds them (``libra eval download --suite rexrank``),
else tiny random models of the same format (then the ratio measures overhead, not model compute).
Usage: ``python benchmarks/bench_eval_models.py --ref-python /path/to/ref/bin/python [--pairs 100] [--device cpu]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

REFERENCE = r"""
import json, os, sys, time
tiny, pairs_path, device = sys.argv[1], sys.argv[2], sys.argv[3]
data = json.load(open(pairs_path)); refs, hyps = data["refs"], data["hyps"]
out = {}
def timed(name, fn):
    t0 = time.perf_counter(); fn(); out[name] = time.perf_counter() - t0
from radgraph import F1RadGraph
rg = F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=os.path.join(tiny, "radgraph-cache"),
                cuda=0 if device.startswith("cuda") else -1)
timed("radgraph", lambda: [rg(refs=[r if r.strip() else ""], hyps=[h if h.strip() else ""]) for r, h in zip(refs, hyps)])
from f1chexbert import F1CheXbert
cx = F1CheXbert(device=device)
timed("chexbert", lambda: [(cx.get_label(r.strip()), cx.get_label(h.strip())) for r, h in zip(refs, hyps)])
from bert_score import BERTScorer
import bert_score
base = os.path.join(os.path.dirname(bert_score.__file__), "rescale_baseline", "en", "distilroberta-base.tsv")
bs = BERTScorer(model_type=os.path.join(tiny, "roberta"), num_layers=5, lang="en", rescale_with_baseline=True,
                baseline_path=base, device=device)
timed("bertscore_rexrank", lambda: [bs.score([h], [r]) for r, h in zip(refs, hyps)])
from RaTEScore import RaTEScore
rs = RaTEScore(bert_model=os.path.join(tiny, "rate-ner"), eval_model=os.path.join(tiny, "rate-eval"),
               use_gpu=device.startswith("cuda"))
def rate():
    for r, h in zip(refs, hyps):
        try:
            rs.compute_score([h], [r])
        except IndexError:
            pass
timed("ratescore", rate)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-python", required=True, help="python of a venv with the reference packages")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from libra_cli.metrics.groups import chexbert_group, radgraph_group, ratescore_group
    from libra_cli.metrics.scoring import ModelOptions, Scorers
    from tests.builders.reports import scorer_pairs
    from tests.builders.scorers import build_all, folder_files, install_in_hf_cache

    refs, hyps = scorer_pairs(args.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = build_all(root / "tiny")
        hub = root / "hub"
        install_in_hf_cache(hub, "StanfordAIMI/RRG_scorers", {"radgraph.tar.gz": tiny["radgraph_archive"],
                                                             "chexbert.pth": tiny["chexbert"]})
        for repo, key in (("bert-base-uncased", "bert"), ("distilroberta-base", "roberta"),
                          ("Angelakeke/RaTE-NER-Deberta", "rate-ner"), ("FremyCompany/BioLORD-2023-C", "rate-eval")):
            install_in_hf_cache(hub, repo, folder_files(tiny[key]))
        pairs = root / "pairs.json"
        pairs.write_text(json.dumps({"refs": refs, "hyps": hyps}))
        env = {**os.environ, "HF_HOME": str(root / "tiny" / "hf"), "HF_HUB_OFFLINE": "1",
               "XDG_CACHE_HOME": str(root / "tiny" / "xdg")}
        proc = subprocess.run([args.ref_python, "-c", REFERENCE, str(root / "tiny"), str(pairs), args.device],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        ref = json.loads(proc.stdout.strip().splitlines()[-1])
        os.environ["LIBRA_CACHE"] = str(root / "libra")
        s = Scorers(ModelOptions(device=args.device, batch_size=args.batch_size, radgraph_model="radgraph",
                                 cache_path=None, hub_cache=hub))
        ids = [str(i) for i in range(len(refs))]
        ours: dict[str, float] = {}
        for name, fn in (("radgraph", lambda: radgraph_group(s, refs, hyps)),
                         ("chexbert", lambda: chexbert_group(s, refs, hyps)),
                         ("bertscore_rexrank", lambda: s.bertscore("rexrank", refs, hyps)),
                         ("ratescore", lambda: ratescore_group(s, refs, hyps, ids))):
            loads = sum(s.load_seconds.values())
            t0 = time.perf_counter()
            fn()
            ours[name] = time.perf_counter() - t0 - (sum(s.load_seconds.values()) - loads)
    n = len(refs)
    print(f"{n} pairs, tiny random scorer models, device {args.device}, libra batch {args.batch_size} "
          "(model load time excluded on both sides)")
    print(f"{'metric':<20}{'reference 1-by-1':>20}{'libra':>14}{'ratio':>9}")
    for name in ours:
        print(f"{name:<20}{n / ref[name]:>14.1f} pr/s{n / ours[name]:>9.1f} pr/s{ref[name] / ours[name]:>8.2f}x")


if __name__ == "__main__":
    main()
