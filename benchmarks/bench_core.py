"""Core inference benchmark (issue 2): load time, peak RSS vs weight size, prefill and decode tokens/s.

    python benchmarks/bench_core.py [--skip-100m]

Models: the shared fixture (tiny-libra-tac) and a ~100M-parameter random Libra (Llama + TAC) written
in the original layout. Peak RSS (growth over the post-import baseline, after load + generate) is reported as a ratio to one copy of the weights: loading must not
materialise the weights twice. Each model is measured in a fresh subprocess so RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.builders: this repo's (radgraph, f1chexbert ship a top-level "tests")
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))

CHILD = r"""
import json, sys, time, torch
from libra_cli.checkpoint import load_model
from libra_cli.generation import Sample, prepare_batch
def kb(field):  # /proc/self/status value in kB (VmRSS now, VmHWM peak)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
t0 = time.perf_counter()
import libra_cli.model.modeling  # transformers' model code: a one-off import cost, reported apart from load
import_s = time.perf_counter() - t0
base_rss = kb("VmRSS")
t0 = time.perf_counter()
lm = load_model(sys.argv[1], dtype="float32", device="cpu")
load_s = time.perf_counter() - t0
weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
b = prepare_batch(lm, [Sample(sys.argv[2], sys.argv[3])])
m = lm.model
with torch.inference_mode():
    feats = m.get_image_features(b.pixel_values)
    emb = m.embed_multimodal(b.input_ids, feats)
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        m(inputs_embeds=emb, attention_mask=b.attention_mask, use_cache=False)
    prefill = (time.perf_counter() - t) / reps
    n_new = 64
    t = time.perf_counter()
    out = m.generate(input_ids=b.input_ids, attention_mask=b.attention_mask, image_features=feats, max_new_tokens=n_new,
                     min_new_tokens=n_new, do_sample=False, use_cache=True, pad_token_id=0)
    total = time.perf_counter() - t
decode_s = max(total - prefill, 1e-9)
# baseline measured in the same run: memory bandwidth (copying a weight-sized buffer, read + write),
# which bounds batch-1 decode at bandwidth / weight bytes tokens per second
peak = kb("VmHWM")  # after a full forward + generate: every weight page has been touched
buf = torch.ones(max(weights // 4, 2**24), dtype=torch.float32)
dst = torch.zeros_like(buf)
dst.copy_(buf)
t = time.perf_counter()
for _ in range(5):
    dst.copy_(buf)
bw = 5 * 2 * buf.numel() * 4 / (time.perf_counter() - t)
del buf, dst
print(json.dumps({"params_M": sum(p.numel() for p in m.parameters()) / 1e6, "import_s": import_s, "load_s": load_s,
                  "weights_MB": weights / 2**20, "peak_rss_delta_MB": (peak - base_rss) / 1024,
                  "peak_rss_over_weights": (peak - base_rss) * 1024 / weights,
                  "prompt_tokens": int(b.input_ids.shape[1]), "prefill_tok_s": b.input_ids.shape[1] / prefill,
                  "decode_tok_s": (n_new - 1) / decode_s, "mem_bw_GBs": bw / 1e9,
                  "decode_vs_bw_bound": ((n_new - 1) / decode_s) / (bw / weights)}))
"""


def run(folder: Path, tag: str) -> dict:
    cur, prior = SHARED / "data/cxr/current.jpg", SHARED / "data/cxr/prior.jpg"
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(cur), str(prior)], capture_output=True,
                         text=True, check=True)
    d = json.loads(out.stdout.strip().splitlines()[-1])
    d["model"] = tag
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-100m", action="store_true")
    args = ap.parse_args()
    rows = [run(SHARED / "fixtures/tiny-libra-tac", "fixture tiny-libra-tac")]
    if not args.skip_100m:
        from tests.builders.tiny import make_tiny_libra

        tmp = Path(tempfile.mkdtemp())
        try:
            shutil.copytree(SHARED / "fixtures/tiny-rad-dino", tmp / "tiny-rad-dino")
            folder = make_tiny_libra(tmp / "libra-100m", SHARED / "fixtures/tokenizer", "libra", "TAC", "../tiny-rad-dino",
                                     hidden=768, intermediate=2048, layers=12, heads=16, kv_heads=16, vocab=32000)
            rows.append(run(folder, "random Libra ~100M (Llama 12x768, 16 heads + TAC)"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    from rich.console import Console
    from rich.table import Table

    t = Table(title="libra core: CPU float32, batch 1")
    cols = ["model", "params_M", "import_s", "load_s", "weights_MB", "peak_rss_delta_MB", "peak_rss_over_weights", "prompt_tokens",
            "prefill_tok_s", "decode_tok_s", "mem_bw_GBs", "decode_vs_bw_bound"]
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    Console(width=200).print(t)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
