"""Image preprocessing of the two example X-rays: today's path vs the pre-issue-15 path, same run.

Must hold (issue 15): preprocessing the pair (current 3056x2544 + prior 2021x2021 grayscale
JPEGs) is at least 2x faster than the old RGB path (``baseline_images.py``), one thread each,
with identical pixels. Also measured: the pair in two threads, a per-run cache hit, and the
opt-in reduced-size JPEG decoding (``jpeg_draft``) with its pixel difference from the exact path.
Rounds alternate between the methods, so machine load hits all of them alike.

    python benchmarks/bench_images.py [--rounds 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))


def _methods(cfg: object, files: list[str]) -> dict[str, Callable[[], list]]:
    from benchmarks.baseline_images import baseline_load_and_preprocess
    from libra_cli import images as im

    draft = replace(cfg, jpeg_draft=True)
    im.load_and_preprocess(files[0], cfg)  # fill the cache for the "cached" row
    im.load_and_preprocess(files[1], cfg)
    return {
        "baseline (old RGB path)": lambda: [baseline_load_and_preprocess(f, cfg) for f in files],
        "new, 1 thread": lambda: [im.load_and_preprocess(f, cfg, cache=False) for f in files],
        "new, pair in 2 threads": lambda: _uncached_many(files, cfg),
        "new, cached (same files again)": lambda: [im.load_and_preprocess(f, cfg) for f in files],
        "new + jpeg_draft (inexact), 1 thread": lambda: [im.load_and_preprocess(f, draft, cache=False) for f in files],
    }


def _uncached_many(files: list[str], cfg: object) -> list:
    from libra_cli import images as im

    saved = im.CACHE.max_bytes
    im.CACHE.max_bytes = 0  # load_and_preprocess_many goes through the cache; measure the work itself
    try:
        return im.load_and_preprocess_many(files, cfg, workers=2)
    finally:
        im.CACHE.max_bytes = saved


def _diff(a: list, b: list, cfg: object) -> dict:
    import numpy as np

    d = np.concatenate([np.abs(x - y).ravel() for x, y in zip(a, b, strict=True)])
    std = float(min(cfg.image_std)) if cfg.do_normalize else 1.0  # normalised units -> 8-bit grey levels
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "max_grey_levels": float(d.max() * std * 255),
            "mean_grey_levels": float(d.mean() * std * 255), "frac_pixels_changed": float((d > 0).mean())}


def bench(name: str, cfg: object, files: list[str], rounds: int) -> dict:
    methods = _methods(cfg, files)
    outs = {k: f() for k, f in methods.items()}  # warm-up, and the outputs to compare
    times: dict[str, list[float]] = {k: [] for k in methods}
    for _ in range(rounds):
        for k, f in methods.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times["baseline (old RGB path)"])
    rows = []
    for k, ts in times.items():
        med = statistics.median(ts)
        rows.append({"method": k, "median_ms": round(med * 1e3, 1), "min_ms": round(min(ts) * 1e3, 1),
                     "speedup_vs_baseline": round(base / med, 2),
                     **{f"diff_{m}": v for m, v in _diff(outs["baseline (old RGB path)"], outs[k], cfg).items()}})
    return {"config": name, "output": list(outs["new, 1 thread"][0].shape), "rows": rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()

    import PIL
    from PIL import features
    from rich.console import Console
    from rich.table import Table

    from libra_cli.images import ImageProcessorConfig

    files = [str(SHARED / "data/cxr/current.jpg"), str(SHARED / "data/cxr/prior.jpg")]
    configs = {"fixture tiny-rad-dino (70 px)": ImageProcessorConfig.from_pretrained(SHARED / "fixtures/tiny-rad-dino"),
               "RAD-DINO (518 px)": ImageProcessorConfig()}
    results = {"pillow": PIL.__version__, "libjpeg_turbo": features.version_feature("libjpeg_turbo"),
               "cpus": os.cpu_count(), "rounds": args.rounds,
               "benchmarks": [bench(n, c, files, args.rounds) for n, c in configs.items()]}
    con = Console(width=160)
    ok = True
    for b in results["benchmarks"]:
        t = Table(title=f"current + prior JPEG -> float32 {b['output']}, {b['config']}")
        for c in ("method", "median ms", "min ms", "x baseline", "max diff (grey levels)", "pixels changed"):
            t.add_column(c)
        for r in b["rows"]:
            t.add_row(r["method"], f"{r['median_ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['speedup_vs_baseline']:.2f}",
                      f"{r['diff_max_grey_levels']:.3g}", f"{100 * r['diff_frac_pixels_changed']:.2f}%")
        con.print(t)
        new = next(r for r in b["rows"] if r["method"] == "new, 1 thread")
        exact = all(r["diff_max_abs"] == 0.0 for r in b["rows"] if "draft" not in r["method"])
        passed = new["speedup_vs_baseline"] >= 2 and exact
        ok &= passed
        con.print(f"must hold ({b['config']}): new path (1 thread) {new['speedup_vs_baseline']:.2f}x the baseline "
                  f"(>= 2x), pixels identical: {exact} -> {'PASS' if passed else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(json.dumps(results))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
