"""LLM judges (GREEN, CRIMSON): pairs/s per judge and engine, on the judges' real prompts.

    python benchmarks/bench_judges.py                          # tiny random judges, CPU, hf (+ vllm if installed)
    python benchmarks/bench_judges.py --shape real --device cuda --engines hf,vllm   # judge-sized random models
    (benchmarks/gpu_suite.py runs the second form as its ``judges`` stages)

Each judge's prompts come from its own code (GREEN's template + chat template, CRIMSON's system
message + prompt + Gemma chat template) over MIMIC-like pairs; every pair then generates exactly
``--tokens`` new tokens (no stop token: random weights never write a real judgement, and the
real judges write a few hundred tokens), so the numbers are engine throughput on the real prompt
lengths. ``hf`` is measured with the shared instruction prefix (batches of ``--batch``) and, as
the baseline in the same run, without it; ``vllm`` with prefix caching. ``real`` shapes:
GREEN-RadLlama2-7b (Llama-2-7B, float16), GREEN-RadPhi2 (Phi-2, float16), MedGemmaCRIMSON
(Gemma-3-4B text stack, bfloat16); random weights, built on the device.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REAL = {  # config overrides that make the tiny judges judge-sized (random weights)
    "green": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000),
    "green:radphi2": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
                          vocab_size=51200),
    "crimson": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=256, vocab_size=262208, sliding_window=1024),
}
FOLDERS = {"green": "green-radllama2", "green:radphi2": "green-radphi2", "crimson": "crimson"}


def build(work: Path, shape: str) -> dict[str, Path]:
    """The tiny judges (``shape=tiny``) or judge-sized random models with the tiny judges' tokenizers."""
    from tests.builders.judges import build_judges

    build_judges(work, SHARED / "fixtures" / "tokenizer")
    folders = {k: work / v for k, v in FOLDERS.items()}
    if shape == "real":
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        for key, folder in folders.items():
            config = AutoConfig.from_pretrained(folder)
            text = config.get_text_config(decoder=True)
            for name, value in REAL[key].items():
                setattr(text, name, value)
            if hasattr(text, "layer_types") and text.layer_types:
                text.layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                    for i in range(text.num_hidden_layers)]
            with torch.device("cpu"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
            model.save_pretrained(folder)
            del model
    return folders


def prompts_for(judge_name: str, folder: Path, n: int) -> list[list[int]]:
    from libra_cli.metrics.judges import get_judge
    from libra_cli.metrics.judges.run import load_tokenizer
    from tests.builders.reports import make_pairs

    judge = get_judge(judge_name)
    refs, hyps = make_pairs(n, seed=11)
    return judge.prompt_ids(load_tokenizer(judge, str(folder)), refs, hyps, "bench")


def measure(engine: str, folder: Path, dtype: str, prompts: list[list[int]], tokens: int, batch: int,
            share_prefix: bool = True) -> dict[str, Any]:
    """Pairs/s of one engine: load excluded, one warm-up pair, then all pairs at ``tokens`` new tokens each."""
    from libra_cli.metrics.judges.base import GenRequest

    t0 = time.perf_counter()
    if engine == "vllm":
        from libra_cli.metrics.judges.vllm_gen import VllmGenerator

        gen: Any = VllmGenerator(str(folder), dtype, longest=max(map(len, prompts)) + tokens)
    else:
        from libra_cli.metrics.judges.hf import HfGenerator

        gen = HfGenerator(str(folder), dtype, os.environ.get("BENCH_DEVICE"), batch, share_prefix=share_prefix)
    req = GenRequest(tokens, ())
    gen.generate(prompts[:1], [req])  # load / warm-up (vLLM starts here)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = gen.generate(prompts, [req] * len(prompts))
    s = time.perf_counter() - t0
    assert all(len(o) == tokens for o in out)
    gen.close()
    return {"pairs": len(prompts), "tokens_per_pair": tokens, "seconds": round(s, 3), "pairs_per_s": round(len(prompts) / s, 3),
            "prompt_tokens_mean": round(sum(map(len, prompts)) / len(prompts), 1), "load_s": round(load_s, 1)}


def run(shape: str, engines: list[str], pairs: int, tokens: int, batch: int, device: str | None,
        judges: list[str]) -> dict[str, Any]:
    if device:
        os.environ["BENCH_DEVICE"] = device
    res: dict[str, Any] = {"shape": shape, "device": device or "auto", "pairs": pairs, "tokens": tokens, "batch": batch,
                           "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = build(Path(tmp), shape)
        for key in judges:
            judge_name = key.split(":")[0]
            prompts = prompts_for(judge_name, folders[key], pairs)
            dtype = "float32" if shape == "tiny" and (device or "cpu") == "cpu" else \
                ("bfloat16" if judge_name == "crimson" else "float16")
            for engine in engines:
                label = f"{key}/{engine}"
                try:
                    res["results"][label] = measure(engine, folders[key], dtype, prompts, tokens, batch)
                    if engine == "hf" and judge_name == "green":  # Gemma's sliding window: no shared prefix
                        base = measure(engine, folders[key], dtype, prompts, tokens, batch, share_prefix=False)
                        res["results"][f"{key}/hf-no-shared-prefix"] = base
                        res["results"][label]["vs_no_shared_prefix"] = round(
                            res["results"][label]["pairs_per_s"] / base["pairs_per_s"], 2)
                except Exception as exc:  # noqa: BLE001 - recorded, the other engines still run
                    res["results"][label] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                print(label, res["results"][label], flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=("tiny", "real"), default="tiny")
    ap.add_argument("--engines", default=None, help="comma list of hf, vllm (default: hf, and vllm when installed)")
    ap.add_argument("--judges", default="green,green:radphi2,crimson")
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import importlib.util

    engines = args.engines.split(",") if args.engines else ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    res = run(args.shape, engines, args.pairs, args.tokens, args.batch, args.device, args.judges.split(","))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
