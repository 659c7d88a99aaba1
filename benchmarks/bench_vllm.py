"""Studies/s of ``libra batch --engine vllm`` against ``--engine hf``, measured in the same run.

Both engines answer the same studies (pre-decoded, distinct images, current + prior, TAC) with the
same greedy settings through the same batch machinery (one ``BatchRunner``, on the hf or the vllm engine),
at batch 16 (vLLM: 16 requests in flight); vLLM also with its default window (2 x max_num_seqs).
The greedy answers of both engines are compared too. Engine start-up (vLLM: profiling, KV cache,
torch.compile unless --enforce-eager) is reported separately, not in studies/s.

Default model: a random Libra built on the fly (Llama 4 layers, hidden 512, 8 heads of 64, TAC,
the shared tiny RAD-DINO); ``--model`` takes any full Libra checkpoint (e.g. a 7B on a GPU).

    python benchmarks/bench_vllm.py                   # CPU, default model, 32 studies
    python benchmarks/bench_vllm.py --quick --enforce-eager
    python benchmarks/bench_vllm.py --model X-iZhang/libra-v1.0-7b --studies 256 --dtype bfloat16   # GPU
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.builders: this repo's (radgraph, f1chexbert ship a top-level "tests")
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))


def build_model(root: Path) -> Path:
    """A random Libra whose LLM has head_dim 64 (vLLM's CPU attention needs it)."""
    from tests.builders.tiny import make_tiny_libra

    shutil.copytree(SHARED / "fixtures/tiny-rad-dino", root / "tiny-rad-dino")
    return make_tiny_libra(root / "libra-bench", SHARED / "fixtures/tokenizer", connector="TAC",
                           tower="../tiny-rad-dino", hidden=512, heads=8, kv_heads=8, intermediate=1376,
                           layers=4, seed=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="full Libra checkpoint (default: a random one built here)")
    ap.add_argument("--studies", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile (faster start)")
    ap.add_argument("--quick", action="store_true", help="16 studies, 32 new tokens")
    ap.add_argument("--beams", type=int, default=0,
                    help="also the paper decoding (N beams, length penalty 2, 3-gram ban) on both engines")
    ap.add_argument("--json", type=Path, default=Path("bench_vllm.json"), help="results file")
    args = ap.parse_args()
    if args.quick:
        args.studies, args.max_new_tokens = 16, 32

    import numpy as np
    import torch

    from libra_cli import batch as b
    from libra_cli.checkpoint import load_model
    from libra_cli.engines.vllm import VllmEngine, load_vllm_model
    from libra_cli.generation import GenerationSettings
    from libra_cli.vllm_engine.available import require_vllm
    from libra_cli.vllm_engine.options import VllmOptions

    require_vllm()
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    model = args.model or str(build_model(tmp))
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    t = time.perf_counter()
    loaded = load_model(model, device=device, dtype=args.dtype)
    hf_start = time.perf_counter() - t
    cur = b.decode_image(str(SHARED / "data/cxr/current.jpg"), loaded)
    pri = b.decode_image(str(SHARED / "data/cxr/prior.jpg"), loaded)
    items = [b.Item(i, i, b.ImageRef(f"mem:c{i}", (cur + np.float32(i * 1e-3)).astype(np.float32)),
                    b.ImageRef(f"mem:p{i}", (pri + np.float32(i * 1e-3)).astype(np.float32)), None)
             for i in range(args.studies)]

    def run(runner: b.BatchRunner, name: str, subset: list | None = None) -> dict:
        todo = items if subset is None else subset
        out = tmp / f"{name}.jsonl"
        s = b.run_batch(runner, todo, [], out, overwrite=True)
        assert s.answered == len(todo), s
        texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
        return {"engine": name, "studies": s.answered, "wall_s": round(s.wall_s, 2),
                "studies_per_s": round(s.samples_per_s, 3), "tokens_per_s": round(s.tokens_per_s, 1),
                "texts": texts}

    run(b.BatchRunner(loaded, settings, batch_size=2), "warm-hf", items[:2])
    hf = run(b.BatchRunner(loaded, settings, batch_size=args.batch), "hf")
    beam_settings = GenerationSettings(max_new_tokens=args.max_new_tokens, num_beams=args.beams, length_penalty=2.0)
    hf_beams = run(b.BatchRunner(loaded, beam_settings, batch_size=args.batch), "hf-beams") if args.beams else None
    del loaded

    t = time.perf_counter()
    vm = load_vllm_model(model, dtype=args.dtype, options=VllmOptions(enforce_eager=args.enforce_eager))
    vllm_start = time.perf_counter() - t
    try:
        engine = VllmEngine(vm)
        run(b.BatchRunner(engine, settings, batch_size=2), "warm-vllm", items[:2])
        v16 = run(b.BatchRunner(engine, settings, batch_size=args.batch), "vllm")
        vdef = run(b.BatchRunner(engine, settings, batch_size="auto"), "vllm-window")  # 2 x max_num_seqs
        v_beams = run(b.BatchRunner(engine, beam_settings, batch_size=args.batch), "vllm-beams") if args.beams else None
    finally:
        vm.close()

    same = sum(a == c for a, c in zip(hf["texts"], v16["texts"], strict=True))
    ratio = v16["studies_per_s"] / hf["studies_per_s"]
    results = {
        "device": device, "model": args.model or "random Libra (4 layers, hidden 512, head_dim 64, TAC)",
        "studies": args.studies, "max_new_tokens": args.max_new_tokens, "batch": args.batch, "dtype": args.dtype,
        "torch_threads": torch.get_num_threads(), "enforce_eager": args.enforce_eager,
        "startup_s": {"hf": round(hf_start, 1), "vllm": round(vllm_start, 1)},
        "runs": [{k: v for k, v in r.items() if k != "texts"} for r in (hf, v16, vdef)],
        "ratio_vllm_vs_hf_batch": round(ratio, 2),
        "ratio_vllm_window_vs_hf_batch": round(vdef["studies_per_s"] / hf["studies_per_s"], 2),
        "same_text": f"{same}/{len(items)}",
    }
    if hf_beams and v_beams:
        results["runs"] += [{k: v for k, v in r.items() if k != "texts"} for r in (hf_beams, v_beams)]
        results["beams"] = {"num_beams": args.beams, "length_penalty": 2.0, "no_repeat_ngram_size": 3,
                            "ratio_vllm_vs_hf": round(v_beams["studies_per_s"] / hf_beams["studies_per_s"], 2),
                            "same_text": f"{sum(a == c for a, c in zip(hf_beams['texts'], v_beams['texts'], strict=True))}"
                                         f"/{len(items)}"}
    print(f"{'engine':12s} {'studies/s':>10s} {'tokens/s':>10s} {'wall s':>8s}")
    for r in results["runs"]:
        print(f"{r['engine']:12s} {r['studies_per_s']:10.3f} {r['tokens_per_s']:10.1f} {r['wall_s']:8.2f}")
    print(f"start-up: hf {hf_start:.1f} s, vllm {vllm_start:.1f} s; same greedy text: {same}/{len(items)}")
    print(f"ratio studies/s vllm / hf at batch {args.batch}: {ratio:.2f}x "
          f"(vllm window {2 * vm.max_num_seqs}: {results['ratio_vllm_window_vs_hf_batch']:.2f}x)")
    if "beams" in results:
        bm = results["beams"]
        print(f"paper decoding ({args.beams} beams): vllm / hf {bm['ratio_vllm_vs_hf']:.2f}x, same text {bm['same_text']}")
    args.json.write_text(json.dumps(results, indent=2))
    print(f"saved {args.json}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
