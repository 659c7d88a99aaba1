"""10-beam search memory and time: the shared-prompt KV cache vs transformers' per-beam copies, same run.

A random Libra with the real image-token count (RAD-DINO-sized input: 1,369 image tokens, so the
prompt is ~1,430 tokens) and a small LLM (``gpu_suite.py --shape small``), float32 on CPU. Each
variant runs in its own process so its peak RSS is its own; both must give the same tokens.

    python benchmarks/bench_beam.py [--tokens 32] [--beams 10] [--batch 1] [--returns 10]

With ``--returns N`` it also measures candidate scores: transformers' ``output_scores`` (a
``[beams, vocab]`` float32 copy per step) vs libra's per-step top-k (``libra_cli/beam_scores.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, sys, time, torch
sys.path.insert(0, sys.argv[1])
from benchmarks.gpu_suite import build_model, stage_encode, samples_for
from libra_cli.generation import GenerationSettings, generate, prepare_batch
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
tokens, beams, bs, returns = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if sys.argv[6] == "output_scores":  # transformers' scores: a [beams, vocab] copy per step
    from libra_cli import beam_scores
    beam_scores.attach = lambda kw, n: None
lm = build_model("small", "cpu", torch.float32)
feats = stage_encode({}, lm)
lm.model.generation_config.min_new_tokens = tokens
st = GenerationSettings(max_new_tokens=tokens, num_beams=beams, length_penalty=2.0, num_return_sequences=returns)
import gc; gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) so encoding's peak doesn't count
base = kb("VmRSS")
t = time.perf_counter()
reps = generate(lm, samples_for(lm, bs), st, image_features=feats.expand(bs, -1, -1))
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "peak_rss_growth_MB": (kb("VmHWM") - base) / 1024,
                  "ids": [r.token_ids for r in reps], "scores": [[c.score for c in r.candidates] for r in reps], "prompt_tokens": int(prepare_batch(lm, samples_for(lm, 1), with_pixels=False).input_ids.shape[1])}))
"""


def run(shared: bool, tokens: int, beams: int, bs: int, returns: int = 1, scores: str = "topk") -> dict:
    env = dict(os.environ, LIBRA_SHARED_PREFIX="1" if shared else "0", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(tokens), str(beams), str(bs), str(returns),
                          scores], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--returns", type=int, default=1,
                    help="also compare candidate scores: transformers' output_scores vs libra's per-step top-k, "
                         "both on the shared prefix, with this many returned sequences (> 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    hf = run(False, args.tokens, args.beams, args.batch)
    shared = run(True, args.tokens, args.beams, args.batch)
    kv_token = 2 * 4 * 256 * 4  # layers x (K, V) x hidden x float32 bytes of the "small" shape
    p = shared["prompt_tokens"]
    res = {"beams": args.beams, "batch": args.batch, "new_tokens": args.tokens,
           "same_ids": hf["ids"] == shared["ids"],
           "transformers": {k: round(v, 2) for k, v in hf.items() if k != "ids" and isinstance(v, float)},
           "shared_prefix": {k: round(v, 2) for k, v in shared.items() if k != "ids" and isinstance(v, float)},
           "kv_MB_analytic": {"transformers": round(args.batch * args.beams * (p + args.tokens) * kv_token / 2**20, 1),
                              "shared_prefix": round(args.batch * (p + args.beams * args.tokens) * kv_token / 2**20, 1)}}
    res["speedup"] = round(hf["wall_s"] / shared["wall_s"], 2)
    res["rss_ratio"] = round(hf["peak_rss_growth_MB"] / max(shared["peak_rss_growth_MB"], 1e-9), 2)
    print(f"{args.beams} beams, batch {args.batch}, {args.tokens} new tokens, prompt ~{p} tokens")
    for name in ("transformers", "shared_prefix"):
        r = res[name]
        print(f"  {name:13s} {r['wall_s']:7.2f} s   peak RSS growth {r['peak_rss_growth_MB']:8.1f} MB   "
              f"KV held (analytic) {res['kv_MB_analytic'][name]:7.1f} MB")
    print(f"  shared prefix: {res['speedup']:.2f}x faster, {res['rss_ratio']:.2f}x less peak memory growth, "
          f"same tokens: {res['same_ids']}")
    if args.returns > 1:
        ref = run(True, args.tokens, args.beams, args.batch, args.returns, "output_scores")
        top = run(True, args.tokens, args.beams, args.batch, args.returns, "topk")
        res["scores"] = {"returns": args.returns, "same_ids": ref["ids"] == top["ids"],
                         "same_scores": ref["scores"] == top["scores"],
                         "output_scores": {k: round(v, 2) for k, v in ref.items() if isinstance(v, float)},
                         "topk": {k: round(v, 2) for k, v in top.items() if isinstance(v, float)},
                         "scores_MB_analytic": {"output_scores": round(args.batch * args.beams * args.tokens * 32000 * 4
                                                                       / 2**20, 1)}}
        print(f"  {args.returns} returned sequences, candidate scores (both shared prefix):")
        for name in ("output_scores", "topk"):
            r = res["scores"][name]
            print(f"    {name:13s} {r['wall_s']:7.2f} s   peak RSS growth {r['peak_rss_growth_MB']:8.1f} MB")
        print(f"    same tokens: {res['scores']['same_ids']}, bit-identical scores: {res['scores']['same_scores']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    ok = res["same_ids"] and (args.returns == 1 or (res["scores"]["same_ids"] and res["scores"]["same_scores"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
