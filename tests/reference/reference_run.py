"""Run the field's reference packages on tiny scorer models (executed by a transformers-4.57 venv).

Called by ``tests/reference/generate.py``; standalone on purpose (the reference venv has no libra).
Usage: python reference_run.py TINY_DIR PAIRS_JSON CXR_REPORT_METRIC_CHECKOUT OUT_JSON

TINY_DIR holds what ``tests.builders.scorers`` built plus an ``hf/hub`` cache in which the
tiny BERT is ``bert-base-uncased`` (f1chexbert and CXR-Report-Metric load that id) and
``xdg/chexbert/chexbert.pth`` (f1chexbert's cache path).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

TINY, PAIRS, CXRM, OUT = (Path(a) for a in sys.argv[1:5])
os.environ["HF_HOME"] = str(TINY / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["XDG_CACHE_HOME"] = str(TINY / "xdg")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
data = json.loads(PAIRS.read_text())
refs, hyps = data["refs"], data["hyps"]
result: dict = {"versions": {p: version(p) for p in ("radgraph", "f1chexbert", "bert-score", "RaTEScore", "transformers", "torch",
                                                     "scikit-learn", "numpy", "nltk", "fast-bleu", "medspacy", "PyRuSH", "spacy")}}


def radgraph_part() -> None:
    from radgraph import F1RadGraph, RadGraph

    # the package crashes on whitespace-only reports; its own rule for "" is a reward of 0
    safe_refs = ["" if not r.strip() else r for r in refs]
    safe_hyps = ["" if not h.strip() else h for h in hyps]
    f1 = F1RadGraph(reward_level="all", model_type="radgraph", model_cache_dir=str(TINY / "radgraph-cache"), cuda=-1)
    mean, per, hyp_ann, ref_ann = f1(refs=safe_refs, hyps=safe_hyps)
    result["radgraph"] = {"mean": [float(x) for x in mean], "per_pair": [[float(x) for x in lst] for lst in per]}
    # ReXrank's RadGraph (CXR-Report-Metric's entity/relation F1 on the same model's annotations)
    rg = RadGraph(model_type="radgraph", model_cache_dir=str(TINY / "radgraph-cache"), cuda=-1)
    sys.path.insert(0, str(CXRM))
    from CXRMetric.radgraph_evaluate_model import evaluate_radgraph

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        empty = {"text": "", "entities": {}}

        def annotate(texts: list[str]) -> dict[str, dict]:
            keep = [i for i, t in enumerate(texts) if t.strip()]  # whitespace-only crashes the package
            out = rg([texts[i] for i in keep])
            return {str(i): out.get(str(j), empty) for j, i in enumerate(keep)}

        gt, pred = annotate(refs), annotate(hyps)
        (t / "gt.json").write_text(json.dumps({str(i): gt.get(str(i), empty) for i in range(len(refs))}))
        (t / "pred.json").write_text(json.dumps({str(i): pred.get(str(i), empty) for i in range(len(hyps))}))
        evaluate_radgraph(str(t / "gt.json"), str(t / "pred.json"), str(t / "e.json"), str(t / "r.json"))
        ent = json.loads((t / "e.json").read_text())
        rel = json.loads((t / "r.json").read_text())
    result["radgraph_combined"] = [(ent[str(i)][0] + rel[str(i)][0]) / 2 for i in range(len(refs))]
    result["radgraph_annotations"] = {"hyps": [pred.get(str(i)) for i in range(len(hyps))]}


def chexbert_part() -> None:
    from f1chexbert import F1CheXbert

    scorer = F1CheXbert(device="cpu")
    labels_h = [scorer.get_label(h.strip()) for h in hyps]
    labels_r = [scorer.get_label(r.strip()) for r in refs]
    try:
        accuracy, pe_accuracy, cr, cr5 = scorer(hyps=hyps, refs=refs)
        result["chexbert"] = {"accuracy": accuracy, "pe_accuracy": pe_accuracy.tolist(), "cr": cr, "cr5": cr5}
    except Exception as exc:  # scikit-learn >= 1.6 (_check_targets returns 4 values)
        result["chexbert"] = {"error": repr(exc)}
    result["chexbert_labels"] = {"hyps": labels_h, "refs": labels_r}


def semb_part() -> None:
    """CXR-Report-Metric's encode.py (CheXbert CLS embeddings, batches of 18) + add_semb_col's cosine."""
    import pandas as pd

    src = CXRM / "CXRMetric" / "CheXbert" / "src"
    sys.path.insert(0, str(src))
    cwd = os.getcwd()
    os.chdir(src)
    try:
        import encode  # noqa: PLC0415 - the reference module

        # an empty report reads back from CSV as NaN, which encode.py cannot tokenise: those pairs are left out
        keep = [i for i in range(len(refs)) if refs[i].strip() and hyps[i].strip()]
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            pd.DataFrame({"study_id": keep, "report": [refs[i] for i in keep]}).to_csv(t / "gt.csv", index=False)
            pd.DataFrame({"study_id": keep, "report": [hyps[i] for i in keep]}).to_csv(t / "pred.csv", index=False)
            ckpt = TINY / "xdg" / "chexbert" / "chexbert.pth"
            encode.label(str(ckpt), str(t / "gt.csv"), str(t / "gt.pt"))
            encode.label(str(ckpt), str(t / "pred.csv"), str(t / "pred.pt"))
            gt_e, pred_e = torch.load(t / "gt.pt"), torch.load(t / "pred.pt")
    finally:
        os.chdir(cwd)
    scores: list = [None] * len(refs)
    for k in sorted(gt_e):  # k is the row position in the CSVs
        label, pred = gt_e[k].numpy(), pred_e[k].numpy()
        scores[keep[k]] = float((label * pred).sum() / (np.linalg.norm(label) * np.linalg.norm(pred)))
    result["semb"] = scores


def bertscore_part() -> None:
    import re

    import bert_score
    from bert_score import BERTScorer

    baseline = Path(bert_score.__file__).parent / "rescale_baseline" / "en" / "distilroberta-base.tsv"
    # CXR-Report-Metric add_bertscore_col (ReXrank): distilroberta-base, layer 5, rescaled, no idf
    test_reports = [re.sub(r" +", " ", t) for t in refs]
    method_reports = [re.sub(r" +", " ", t) for t in hyps]
    scorer = BERTScorer(model_type=str(TINY / "roberta"), num_layers=5, batch_size=256, lang="en",
                        rescale_with_baseline=True, baseline_path=str(baseline), idf=False, idf_sents=test_reports)
    _, _, f1 = scorer.score(method_reports, test_reports)
    result["bertscore_rexrank"] = [float(x) for x in f1]
    # the original Libra evaluation (HF evaluate's bertscore): distilbert-base-uncased layer 5, no rescale
    scorer = BERTScorer(model_type=str(TINY / "bert"), num_layers=2, batch_size=64, idf=False, rescale_with_baseline=False)
    _, _, f1 = scorer.score(hyps, refs)
    result["bertscore_original"] = [float(x) for x in f1]


def bleu2_part() -> None:
    """CXR-Report-Metric add_bleu_col: fast_bleu BLEU-2 per report."""
    from fast_bleu import BLEU

    def prep(text: str) -> list[str]:
        return [t for t in str(text).lower().replace(".", " .").split(" ") if t != ""]

    out = []
    for r, h in zip(refs, hyps, strict=False):
        out.append(float(BLEU([prep(r)], {"bigram": (1 / 2.0, 1 / 2.0)}).get_score([prep(h)])["bigram"][0]))
    result["bleu2"] = out


def ratescore_part() -> None:
    from RaTEScore import RaTEScore
    from RaTEScore import score as rscore
    from RaTEScore import utils as rutils

    scorer = RaTEScore(bert_model=str(TINY / "rate-ner"), eval_model=str(TINY / "rate-eval"), use_gpu=False, batch_size=1)
    per = []
    for r, h in zip(refs, hyps, strict=False):  # one pair at a time: a batch misaligns after a sentence-less report
        try:
            per.append(float(scorer.compute_score([h], [r])[0]))
        except IndexError:
            per.append(None)
    result["ratescore"] = per
    result["ratescore_ties"] = [i for i in range(len(refs)) if _ratescore_tied(scorer, rscore, rutils, refs[i], hyps[i])]


def _ratescore_tied(scorer, rscore, rutils, ref: str, hyp: str) -> bool:  # noqa: ANN001
    """Whether a pair's score rests on a float-rounding tie: a NER label whose two best logits are within
    1e-3, or a top-1 synonym match whose runner-up (another string of another type) is within 1e-4.
    Such a choice can differ between CPUs and BLAS builds, so the test does not pin those pairs."""
    import torch.nn.functional as F

    ents, types, strings = [], [], []
    for text in (ref, hyp):
        sents, _ = rutils.sentence_split([text])
        for s in sents:
            enc = scorer.tokenizer([s], return_tensors="pt", truncation=True, max_length=512)
            with torch.no_grad():
                top = scorer.model(**enc).logits[0].topk(2, dim=-1).values
            if bool(((top[:, 0] - top[:, 1]) < 1e-3).any()):
                return True
        pairs = rscore.run_ner([text], scorer.idx2label, scorer.tokenizer, scorer.model, scorer.device, 1)[0] if sents else []
        emb, ty = rscore.process_embedding(pairs, scorer.eval_tokenizer, scorer.eval_model, scorer.device)
        ents.append(emb)
        types.append(ty)
        strings.append([p[0] for p in pairs])
    if len(ents[0]) == 0 or len(ents[1]) == 0:
        return False
    sim = F.normalize(ents[0], dim=1) @ F.normalize(ents[1], dim=1).T
    for m, ty, st in ((sim, types[1], strings[1]), (sim.T, types[0], strings[0])):
        if m.shape[1] < 2:
            continue
        vals, idx = m.topk(2, dim=1)
        for row in range(m.shape[0]):
            a, b = int(idx[row, 0]), int(idx[row, 1])
            if float(vals[row, 0] - vals[row, 1]) < 1e-4 and ty[a] != ty[b] and st[a] != st[b]:
                return True
    return False


def radcliq_part() -> None:
    """CXR-Report-Metric's RadCliQ-v1 (radcliq-v1.pkl) on the four columns computed above."""
    import pickle

    import __main__

    sys.path.insert(0, str(CXRM))
    os.environ.setdefault("MKL_THREADING_LAYER", "GNU")
    from CXRMetric.run_eval import COLS, CompositeMetric  # noqa: F401 - COLS documents the column order

    __main__.CompositeMetric = CompositeMetric
    with open(CXRM / "CXRMetric" / "radcliq-v1.pkl", "rb") as fh:
        model = pickle.load(fh)
    rows = [i for i, v in enumerate(result["semb"]) if v is not None]
    x = np.array([[result[c][i] for c in ("radgraph_combined", "bertscore_rexrank", "semb", "bleu2")] for i in rows])
    out: list = [None] * len(refs)
    for i, v in zip(rows, model.predict(x), strict=False):
        out[i] = float(v)
    result["radcliq_v1"] = out
    result["radcliq_cols"] = list(COLS)


partial = OUT.with_suffix(".partial.json")  # resume: parts already computed on these inputs are kept
if partial.exists():
    result.update(json.loads(partial.read_text()))
for part in (radgraph_part, chexbert_part, semb_part, bertscore_part, bleu2_part, ratescore_part, radcliq_part):
    if part.__name__ in result.get("seconds", {}):
        continue
    t0 = time.perf_counter()
    part()
    result.setdefault("seconds", {})[part.__name__] = time.perf_counter() - t0
    partial.write_text(json.dumps(result))
    print(f"{part.__name__} done", file=sys.stderr)
OUT.write_text(json.dumps(result))
