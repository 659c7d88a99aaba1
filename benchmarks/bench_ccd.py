"""CCD decoding speed (issue 14): the cached, batched decoder vs the reference's full-recompute loop and ordinary greedy.

    python benchmarks/bench_ccd.py [--tokens 64 256] [--size 20m|50m|100m] [--repeats 3] [--no-recompute] [--out F]

One study (current + prior X-ray, labels from a file), CPU float32, a random Libra (Llama + TAC) in the
original layout with a 32000-token vocabulary. All three decoders run in the same process on the same
inputs; tokens/s count new tokens over decoding time (prefill included, image encoding excluded). The
recompute loop is ``tests/ccd_reference.py``, the line-by-line port of the reference. After a warm-up,
greedy and CCD run ``--repeats`` times, interleaved, and the best time counts (the machine is shared);
the recompute loop, quadratic in length, runs once (``--no-recompute`` skips it, for larger models on a
slow machine). The default model is small (20M parameters, most of them in the 32000-token embedding and
head) so that the recompute loop at 256 tokens finishes in minutes on two shared cores. Goals: CCD costs at
most 2.5x ordinary greedy, and is at least 5x faster than the recompute loop at 256 tokens. Also measured:
one decode step as one forward over both streams (what the decoder does) vs two one-row forwards (what
running the guided stream inside a ``generate`` logits processor would cost).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))  # tests/ccd_reference.py: the recompute loop
LABELS = {"Atelectasis": 0.2, "Cardiomegaly": 0.7, "Consolidation": 0.1, "Edema": 0.05, "Enlarged Cardiomediastinum": 0.58,
          "Fracture": 0.01, "Lung Lesion": 0.3, "Lung Opacity": 0.91, "Pleural Effusion": 0.66, "Pneumonia": 0.4,
          "Pneumothorax": 0.02, "Pleural Other": 0.1, "Support Devices": 0.8, "Frontal": 0.95, "Lateral": 0.05}
SIZES = {"100m": dict(hidden=768, intermediate=2048, layers=12, heads=16, kv_heads=16),
         "50m": dict(hidden=512, intermediate=1376, layers=6, heads=8, kv_heads=8),
         "20m": dict(hidden=256, intermediate=688, layers=4, heads=4, kv_heads=4)}


def _generate(lm, sample, settings) -> tuple[list[int], float]:
    from libra_cli.generation import generate

    rep = generate(lm, [sample], settings)[0]
    return rep.token_ids, rep.timings["generate_s"]


def _recompute(lm, sample, n: int, encode_s: float) -> tuple[list[int], float]:
    from libra_cli.generation import default_query, prepare_batch
    from tests.ccd_reference import reference_ccd

    pix = prepare_batch(lm, [sample]).pixel_values
    t = time.perf_counter()
    ids = reference_ccd(lm, pix, default_query(lm), LABELS, max_new_tokens=n)
    return ids, time.perf_counter() - t - encode_s


def _step_costs(lm, sample, steps: int = 32) -> dict[str, float]:
    """ms per decode step: one forward over 2 rows (both streams) vs two forwards of 1 row each."""
    import torch
    from transformers import DynamicCache

    from libra_cli.ccd.streams import Streams
    from libra_cli.generation import prepare_batch, prompt_ids

    model = lm.model
    pix = prepare_batch(lm, [sample]).pixel_values
    ids = prompt_ids(lm, sample)[1]
    tok = torch.tensor([5])
    with torch.inference_mode():
        feats = model.get_image_features(pix)
        both = Streams(model, 0)
        both.prefill([ids], [ids], feats)
        t = time.perf_counter()
        for _ in range(steps):
            both.step(tok)
        one_forward = (time.perf_counter() - t) / steps
        caches = []
        for _ in range(2):  # what a logits processor owning the second stream would run: two 1-row caches
            cache = DynamicCache()
            x = torch.tensor([ids])
            model(inputs_embeds=model.embed_multimodal(x, feats), past_key_values=cache, use_cache=True, logits_to_keep=1)
            caches.append(cache)
        t = time.perf_counter()
        for i in range(steps):
            pos = torch.tensor([[len(ids) + i]])
            for cache in caches:
                model(input_ids=tok[:, None], position_ids=pos, past_key_values=cache, use_cache=True)
        two_forwards = (time.perf_counter() - t) / steps
    return {"one_forward_2_rows_ms": one_forward * 1000, "two_forwards_1_row_ms": two_forwards * 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--size", choices=sorted(SIZES), default="20m")
    ap.add_argument("--no-recompute", action="store_true", help="skip the reference's full-recompute loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    import torch

    from libra_cli.checkpoint import load_model
    from libra_cli.generation import GenerationSettings, Sample, prepare_batch
    from tests.builders.tiny import make_tiny_libra

    tmp = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(SHARED / "fixtures/tiny-rad-dino", tmp / "tiny-rad-dino")
        folder = make_tiny_libra(tmp / "m", SHARED / "fixtures/tokenizer", "libra", "TAC", "../tiny-rad-dino", vocab=32000,
                                 **SIZES[args.size])
        labels = tmp / "labels.json"
        labels.write_text(json.dumps(LABELS))
        lm = load_model(str(folder), dtype="float32", device="cpu")
        sample = Sample(str(SHARED / "data/cxr/current.jpg"), str(SHARED / "data/cxr/prior.jpg"))
        with torch.inference_mode():
            pix = prepare_batch(lm, [sample]).pixel_values
            t = time.perf_counter()
            lm.model.get_image_features(pix)
            encode_s = time.perf_counter() - t
        ccd = lambda n: GenerationSettings(max_new_tokens=n, decoding="ccd", ccd_labels=str(labels))  # noqa: E731
        _generate(lm, sample, GenerationSettings(max_new_tokens=4))  # warm-up: first-call costs out of the timings
        _generate(lm, sample, ccd(4))
        rows = []
        for n in args.tokens:
            g_s, c_s = [], []
            for _ in range(args.repeats):
                g_ids, t = _generate(lm, sample, GenerationSettings(max_new_tokens=n))
                g_s.append(t)
                c_ids, t = _generate(lm, sample, ccd(n))
                c_s.append(t)
            row = {"new_tokens": n, "greedy_tok_s": len(g_ids) / min(g_s), "ccd_tok_s": len(c_ids) / min(c_s),
                   "ccd_tokens": len(c_ids)}
            row["ccd_cost_vs_greedy"] = row["greedy_tok_s"] / row["ccd_tok_s"]
            if not args.no_recompute:
                print(f"{n} tokens: greedy and CCD done; recompute loop ...", file=sys.stderr, flush=True)
                r_ids, r_s = _recompute(lm, sample, n, encode_s)
                row["recompute_tok_s"] = len(r_ids) / r_s
                row["ccd_equals_recompute"] = c_ids == r_ids
                row["ccd_speedup_vs_recompute"] = row["ccd_tok_s"] / row["recompute_tok_s"]
            rows.append(row)
        steps = _step_costs(lm, sample)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from rich.console import Console
    from rich.table import Table

    params = sum(p.numel() for p in lm.model.parameters()) / 1e6
    t = Table(title=f"CCD decoding, random Libra {params:.0f}M params (vocab 32000), CPU float32, batch 1, "
                    f"{torch.get_num_threads()} threads")
    cols = list(rows[0])
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    Console(width=200).print(t)
    print(f"decode step: one forward over both streams {steps['one_forward_2_rows_ms']:.1f} ms; "
          f"two one-row forwards {steps['two_forwards_1_row_ms']:.1f} ms "
          f"(x{steps['two_forwards_1_row_ms'] / steps['one_forward_2_rows_ms']:.2f})")
    result = {"model_params_M": params, "rows": rows, "step": steps}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
