"""Throughput of ``libra batch`` on CPU with the shared fixture (tiny-libra-tac).

Must hold: greedy, 64 new tokens, samples/s at batch 16 is at least 3x the same code at batch 1,
with pre-decoded images (issue 3) and with full-size JPEGs decoded in the run (issue 15: every
sample reads its own copies of the 3056x2544 and 2021x2021 example X-rays, so neither the
encoder cache nor the per-run image cache can hit). Also measured: batch 1/4/16 greedy and
3-beam (samples/s, tokens/s), and with the real JPEGs the fraction of the wall time the model
waits for images with 0 and 2 decoding workers.

    python benchmarks/bench_batch.py            # full
    python benchmarks/bench_batch.py --quick    # fewer samples
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default=str(SHARED / "fixtures" / "tiny-libra-tac"))
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    import numpy as np

    from libra_cli import batch as b
    from libra_cli import images
    from libra_cli.checkpoint import load_model
    from libra_cli.generation import GenerationSettings

    loaded = load_model(args.model, device="cpu")
    cur = b.decode_image(str(SHARED / "data/cxr/current.jpg"), loaded)
    pri = b.decode_image(str(SHARED / "data/cxr/prior.jpg"), loaded)
    n = 16 if args.quick else 32
    prompts = [None, "Describe the chest radiograph.", "Any change in the cardiac silhouette compared with the prior?"]

    def mem_items(count: int) -> list[b.Item]:
        """Pre-decoded, distinct images per sample (the encoder runs for every sample)."""
        out = []
        for i in range(count):
            c = (cur + np.float32(i * 1e-3)).astype(np.float32)
            p = (pri + np.float32(i * 1e-3)).astype(np.float32)
            out.append(b.Item(i, i, b.ImageRef(f"mem:c{i}", c), b.ImageRef(f"mem:p{i}", p), prompts[i % 3]))
        return out

    def measure(items: list[b.Item], settings: GenerationSettings, bs: int, workers: int = 2) -> dict:
        images.CACHE.clear()  # each measurement is a run of its own: nothing preprocessed yet
        with tempfile.TemporaryDirectory() as d:
            runner = b.BatchRunner(loaded, settings, batch_size=bs, workers=workers)
            s = b.run_batch(runner, items, [], Path(d) / "a.jsonl")
        assert s.answered == len(items)
        return {"batch": bs, "samples": s.answered, "wall_s": round(s.wall_s, 2),
                "samples_per_s": round(s.samples_per_s, 3), "tokens_per_s": round(s.tokens_per_s, 1),
                "image_wait_fraction": round(s.image_wait_fraction, 3)}

    results: dict = {"device": "cpu", "torch_threads": __import__("torch").get_num_threads(), "n": n}
    greedy = GenerationSettings(max_new_tokens=64)
    beam = GenerationSettings(max_new_tokens=64, num_beams=3, length_penalty=2.0)
    measure(mem_items(2), greedy, 2)  # warm-up
    for name, st in (("greedy64", greedy), ("beam3_64", beam)):
        rows = [measure(mem_items(n if bs > 1 or name == "greedy64" else n // 2), st, bs) for bs in (1, 4, 16)]
        results[name] = rows
        for r in rows:
            print(f"{name:9s} batch {r['batch']:2d}: {r['samples_per_s']:7.3f} samples/s {r['tokens_per_s']:8.1f} tok/s "
                  f"({r['samples']} samples, {r['wall_s']} s)")
    g = {r["batch"]: r for r in results["greedy64"]}
    ratio = g[16]["samples_per_s"] / g[1]["samples_per_s"]
    results["ratio_b16_vs_b1_greedy"] = round(ratio, 2)
    print(f"must hold: samples/s batch 16 / batch 1 (greedy, 64 tokens, pre-decoded) = {ratio:.2f}x (>= 3x: "
          f"{'PASS' if ratio >= 3 else 'FAIL'})")

    # real JPEGs: a copy of each X-ray per sample (a symlink would let the per-run image cache hit)
    with tempfile.TemporaryDirectory() as d:
        items = []
        for i in range(n):
            c, p = Path(d) / f"c{i}.jpg", Path(d) / f"p{i}.jpg"
            shutil.copyfile(SHARED / "data/cxr/current.jpg", c)
            shutil.copyfile(SHARED / "data/cxr/prior.jpg", p)
            items.append(b.Item(i, i, b.ImageRef(f"file:{c}", str(c)), b.ImageRef(f"file:{p}", str(p)), prompts[i % 3]))
        jpeg = {bs: measure(items, greedy, bs) for bs in (1, 16)}
        # batch 4: several batches, so decoding the next batch can overlap generating this one
        waits = {w: measure(items, greedy, 4, workers=w) for w in (0, 2)}
    results["jpeg_greedy64"] = list(jpeg.values())
    jratio = jpeg[16]["samples_per_s"] / jpeg[1]["samples_per_s"]
    results["ratio_b16_vs_b1_greedy_jpeg"] = round(jratio, 2)
    for r in jpeg.values():
        print(f"real JPEGs batch {r['batch']:2d}: {r['samples_per_s']:7.3f} samples/s, model waits for images "
              f"{100 * r['image_wait_fraction']:.1f}% of the time")
    print(f"must hold: samples/s batch 16 / batch 1 (greedy, 64 tokens, full-size JPEGs, 2 workers) = {jratio:.2f}x "
          f"(>= 3x: {'PASS' if jratio >= 3 else 'FAIL'})")
    results["jpeg_greedy64_b4"] = waits
    for w, r in waits.items():
        print(f"real JPEGs, batch 4, {w} workers: {r['samples_per_s']:.3f} samples/s, model waits for images "
              f"{100 * r['image_wait_fraction']:.1f}% of the time")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results))
    return 0 if ratio >= 3 and jratio >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
