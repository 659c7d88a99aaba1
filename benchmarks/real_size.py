"""Benchmark at the published sizes: random Libra checkpoints of the libra-v1.0-7b / -3b shape, measured
against this machine's disk, compute and memory-bandwidth bounds, and against the original Libra code.

    python benchmarks/real_size.py --shape 7b --out /work/bigckpt --tokens 8 \\
        --original-python /work/libra-orig-venv/bin/python --original-src /work/libra-orig \\
        --json benchmarks/results/real_size-7b-cpu.json

Stages (``--stages``, default all): ``build`` writes the checkpoint shard by shard in bfloat16 (never the
whole model in memory; resumable), in the published layout: config.json, model-0000N-of-0000M.safetensors
+ index, the SentencePiece tokenizer, the RAD-DINO-shape encoder beside it (``mm_vision_tower:
"../rad-dino-<px>"``). ``machine`` measures the disk's cold read speed (the shard's pages dropped with
posix_fadvise first), GEMM GFLOP/s in float32 and bfloat16 at the prefill's shape and the memory
bandwidth (a copy of a 1 GiB buffer, and a bf16 matrix-vector product of weight size). ``libra`` and
``original`` load the checkpoint cold in a fresh process each and generate for the shipped X-ray pair:
greedy ``--tokens`` new tokens (time to first token = image encoding + prefill; then decode tokens/s,
from a streamer's timestamps), then 10-beam paper decoding (length penalty 2, no-repeat 3-grams) with the
peak RSS reset before it (``/proc/self/clear_refs``), against greedy's. ``cli`` runs the README's
``libra infer --model CKPT cur.jpg prior.jpg`` with no dtype flag and records its exit status, time,
peak RSS and stderr's last line. The EOS row of the random LM head is zeroed, so that every run
generates exactly ``--tokens`` tokens. The original runs the way its code runs on a CPU
(``load_pretrained_model(..., device="cpu")``: float16 weights) through its own prompt, image and
generate code; its venv is documented in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))

# published shapes (docs/reference-format.md; Llama-2-7B / Llama-3.2-3B text models, RAD-DINO ViT-B/14 at 518 px)
SHAPES: dict[str, dict[str, Any]] = {
    "7b": {"name": "libra-v1.0-7b", "hidden": 4096, "layers": 32, "heads": 32, "kv_heads": 32, "intermediate": 11008,
           "vocab": 32000, "tower": {"hidden": 768, "layers": 12, "heads": 12, "image": 518}, "conv_mode": "libra_v1"},
    "3b": {"name": "libra-v1.0-3b", "hidden": 3072, "layers": 28, "heads": 24, "kv_heads": 8, "intermediate": 8192,
           "vocab": 128256, "tower": {"hidden": 768, "layers": 12, "heads": 12, "image": 518}, "conv_mode": "libra_v1",
           "extra": {"rope_theta": 500000.0, "tie_word_embeddings": True}},
    "tiny": {"name": "libra-tiny", "hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128,
             "vocab": 1000, "tower": {"hidden": 32, "layers": 12, "heads": 2, "image": 70}, "conv_mode": "libra_v1"},
}
SHARD_BYTES = 4_900_000_000
MIB_GB = 1.048576 / 1000  # MiB (what /proc reports, in kB / 1024) -> GB


def kb(field: str) -> int:
    """A /proc/self/status value in kB (VmRSS now, VmHWM peak)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field))


def drop_pages(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (only ours), so that the next read is a cold one."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ build


def build(shape: str, out: Path) -> Path:
    """Write the random checkpoint (resumable: a finished index means done). Returns its folder."""
    import torch
    from safetensors.torch import save_file

    from libra_cli.model.modeling import BACKBONES
    from tests.builders.tiny import copy_tokenizer, libra_config, make_vision_tower

    s = SHAPES[shape]
    t = s["tower"]
    tower_dir = out / f"rad-dino-{t['image']}-{t['hidden']}"
    folder = out / s["name"]
    index = folder / "model.safetensors.index.json"
    if index.is_file() and (tower_dir / "config.json").is_file():
        return folder
    if not (tower_dir / "config.json").is_file():
        make_vision_tower(tower_dir, "dinov2", hidden=t["hidden"], layers=t["layers"], image=t["image"])
        if t["heads"] != 2:  # the published ViT-B widths: 12 heads, MLP ratio 4 (the helper makes tiny encoders)
            import transformers as tf

            torch.manual_seed(0)
            tf.Dinov2Model(tf.Dinov2Config(hidden_size=t["hidden"], num_hidden_layers=t["layers"],
                                           num_attention_heads=t["heads"], mlp_ratio=4, image_size=t["image"],
                                           patch_size=14)).save_pretrained(tower_dir)
    cfg = libra_config("libra", "TAC", f"../{tower_dir.name}", mm_hidden=t["hidden"], hidden=s["hidden"],
                       layers=s["layers"], heads=s["heads"], kv_heads=s["kv_heads"], vocab=s["vocab"],
                       intermediate=s["intermediate"], **s.get("extra", {}))
    cfg.max_position_embeddings = 4096
    cfg.torch_dtype = "bfloat16"
    with torch.device("meta"):
        model = BACKBONES["libra"][1](cfg)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")]
    if getattr(cfg, "tie_word_embeddings", False):
        shapes = [(k, sh) for k, sh in shapes if k != "lm_head.weight"]
    del model
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for k, sh in shapes:
        n = 2 * int(torch.Size(sh).numel())
        if size + n > SHARD_BYTES and groups[-1]:
            groups.append([])
            size = 0
        groups[-1].append((k, sh))
        size += n
    weight_map: dict[str, str] = {}
    total = 0
    eos = int(cfg.eos_token_id)
    for i, group in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        for k, _ in group:
            weight_map[k] = name
        total += sum(2 * int(torch.Size(sh).numel()) for _, sh in group)
        if (folder / name).is_file():
            continue
        state = {}
        for k, sh in group:  # one shard in memory at a time, generated in bf16
            if k.endswith("norm.weight") or "layernorm" in k:
                state[k] = torch.ones(sh, dtype=torch.bfloat16)
            elif k.endswith(".bias") or k.endswith("prior_bias"):
                state[k] = torch.zeros(sh, dtype=torch.bfloat16)
            else:
                std = 0.02 if len(sh) > 1 else 0.1
                state[k] = (torch.randn(sh, generator=gen, dtype=torch.float32) * std).to(torch.bfloat16)
            if k == "lm_head.weight" or (k == "model.embed_tokens.weight" and getattr(cfg, "tie_word_embeddings", False)):
                state[k][eos].zero_()  # never the argmax: every run generates exactly --tokens tokens
        tmp = folder / (name + ".partial")
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.rename(folder / name)
        del state
    cfg.save_pretrained(folder)
    copy_tokenizer(SHARED / "fixtures" / "tokenizer", folder)
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return folder


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


# ------------------------------------------------------------------ machine bounds


def machine(folder: Path, prompt_tokens: int, hidden: int, inter: int, weight_bytes: int) -> dict[str, Any]:
    """Cold disk read speed, GEMM GFLOP/s (fp32, bf16) at the prefill's shape, memory bandwidth."""
    import torch

    out: dict[str, Any] = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    from libra_cli.checkpoint.memory import cpu_bf16_class

    out["cpu_bf16"] = cpu_bf16_class()
    first = shards(folder)[0]
    drop_pages([first])
    t0 = time.perf_counter()
    with open(first, "rb") as fh:
        while fh.read(64 << 20):
            pass
    out["disk_read_gb_s"] = first.stat().st_size / (time.perf_counter() - t0) / 1e9
    for dt in (torch.float32, torch.bfloat16):
        a = torch.randn(prompt_tokens, hidden).to(dt)
        b = torch.randn(hidden, inter).to(dt)
        a @ b
        reps, t0 = 3, time.perf_counter()
        for _ in range(reps):
            a @ b
        out[f"gemm_gflops_{str(dt)[6:]}"] = 2 * prompt_tokens * hidden * inter * reps / (time.perf_counter() - t0) / 1e9
    buf = torch.ones(max(1 << 22, min(1 << 28, weight_bytes // 16)), dtype=torch.float32)  # 1 GiB at 7B
    dst = torch.empty_like(buf)
    dst.copy_(buf)
    t0 = time.perf_counter()
    for _ in range(3):
        dst.copy_(buf)
    out["copy_gb_s"] = 3 * 2 * buf.numel() * 4 / (time.perf_counter() - t0) / 1e9  # read + write
    del buf, dst
    w = torch.randn(inter, hidden).to(torch.bfloat16)
    x = torch.randn(1, hidden).to(torch.bfloat16)
    torch.nn.functional.linear(x, w)
    t0 = time.perf_counter()
    for _ in range(20):
        torch.nn.functional.linear(x, w)
    out["gemv_bf16_gb_s"] = 20 * w.numel() * 2 / (time.perf_counter() - t0) / 1e9
    return out


# ------------------------------------------------------------------ the two implementations (child processes)

COMMON = r"""
import json, os, sys, time
import torch
folder, cur, prior, tokens, dtype_arg = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
def reset_peak():
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
class Stamps:
    # a streamer: generate() puts the prompt first, then every new token
    def __init__(self):
        self.t = []
    def put(self, value):
        self.t.append(time.perf_counter())
    def end(self):
        pass
out = {"rss_start_mb": kb("VmRSS") / 1024}
"""

LIBRA_CHILD = COMMON + r"""
from libra_cli.checkpoint import load_model
from libra_cli.generation import GenerationSettings, generate_report
t0 = time.perf_counter()
lm = load_model(folder, dtype=dtype_arg, device="cpu", conv_mode="libra_v1")
out["load_s"] = time.perf_counter() - t0
out["dtype"] = str(lm.dtype).replace("torch.", "")
out["rss_after_load_mb"] = kb("VmRSS") / 1024
def run(beams, stamps=None):
    s = GenerationSettings(max_new_tokens=tokens, num_beams=beams, length_penalty=2.0 if beams > 1 else 1.0)
    t = time.perf_counter()
    rep = generate_report(lm, cur, prior, settings=s, streamer=stamps)
    return time.perf_counter() - t, rep
"""

ORIGINAL_CHILD = COMMON + r"""
src = os.environ["LIBRA_ORIGINAL_SRC"]
sys.path.insert(0, src)
os.chdir(folder)  # the original resolves a relative mm_vision_tower against the working directory
from libra.model.builder import load_pretrained_model
from libra.mm_utils import tokenizer_image_token, KeywordsStoppingCriteria
from libra.conversation import conv_templates, SeparatorStyle
from libra.constants import IMAGE_TOKEN_INDEX, DEFAULT_IMAGE_TOKEN
from libra.eval.run_libra import get_image_tensors
t0 = time.perf_counter()
tokenizer, model, image_processor, _ = load_pretrained_model(folder, None, "libra-v1.0-7b", device="cpu")
if dtype_arg != "float16":  # --original-dtype: the same code with its weights cast after loading
    model.to(getattr(torch, dtype_arg))
model.eval()
out["load_s"] = time.perf_counter() - t0
out["dtype"] = str(model.dtype).replace("torch.", "")
out["rss_after_load_mb"] = kb("VmRSS") / 1024
def run(beams, stamps=None):
    t = time.perf_counter()
    qs = DEFAULT_IMAGE_TOKEN + "\n" + "Provide a detailed description of the findings in the radiology image."
    conv = conv_templates["libra_v1"].copy()
    conv.append_message(conv.roles[0], qs)
    conv.append_message(conv.roles[1], None)
    input_ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    image_tensor = get_image_tensors([cur, prior], image_processor, model, device="cpu")
    stop_str = conv.sep if conv.sep_style not in {SeparatorStyle.TWO, SeparatorStyle.LLAMA_3, SeparatorStyle.MISTRAL} else conv.sep2
    crit = KeywordsStoppingCriteria([stop_str], tokenizer, input_ids)
    kw = dict(num_beams=beams, no_repeat_ngram_size=3, length_penalty=2.0) if beams > 1 else {}
    with torch.inference_mode():
        ids = model.generate(input_ids, images=image_tensor, do_sample=False, max_new_tokens=tokens, use_cache=True,
                             stopping_criteria=[crit], attention_mask=torch.ones_like(input_ids),
                             pad_token_id=tokenizer.pad_token_id or 0, streamer=stamps, **kw)
    return time.perf_counter() - t, ids
"""

MEASURE = r"""
stamps = Stamps()
t0 = time.perf_counter()
greedy_s, _ = run(1, stamps)
puts = stamps.t[1:]  # the first put is the prompt
out["greedy_s"] = greedy_s
out["new_tokens"] = len(puts)
out["ttft_s"] = puts[0] - t0
out["decode_tokens_per_s"] = (len(puts) - 1) / (puts[-1] - puts[0]) if len(puts) > 1 else None
out["peak_rss_greedy_mb"] = kb("VmHWM") / 1024
if os.environ.get("BEAMS", "10") != "0":
    reset_peak()
    rss0 = kb("VmRSS")
    out["beam10_s"], _ = run(int(os.environ.get("BEAMS", "10")))
    out["peak_rss_beam10_mb"] = kb("VmHWM") / 1024
    out["beam10_growth_mb"] = (kb("VmHWM") - rss0) / 1024
print("RESULT " + json.dumps(out))
"""


def child(python: str, code: str, folder: Path, tokens: int, dtype: str, env: dict[str, str], beams: int,
          timeout: float | None = None) -> dict[str, Any]:
    """One implementation in a fresh process, its weights cold; its result or its error (or its timeout)."""
    drop_pages(shards(folder))
    cur, prior = SHARED / "data" / "cxr" / "current.jpg", SHARED / "data" / "cxr" / "prior.jpg"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, "-c", code, str(folder), str(cur), str(prior), str(tokens), dtype],
                              capture_output=True, text=True, env={**os.environ, **env, "BEAMS": str(beams)},
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout} s", "rc": None, "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        return {"error": (proc.stderr or proc.stdout)[-1500:], "rc": proc.returncode, "wall_s": wall}
    res = json.loads(line[7:])
    res["wall_s"] = wall
    return res


def cli(folder: Path, tokens: int, timeout: int) -> dict[str, Any]:
    """The README's ``libra infer`` with no dtype flag: exit status, time, peak RSS, stderr's last line."""
    drop_pages(shards(folder))
    cur, prior = SHARED / "data" / "cxr" / "current.jpg", SHARED / "data" / "cxr" / "prior.jpg"
    exe = str(Path(sys.executable).parent / "libra")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_OF, exe, "infer", "--model", str(folder), str(cur), str(prior),
                           "--max-new-tokens", str(tokens), "--conv-mode", "libra_v1"],
                          capture_output=True, text=True, timeout=timeout)
    err_lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    peak = int(err_lines.pop().split()[1]) if err_lines and err_lines[-1].startswith("MAXRSS ") else 0
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak / 1024,
            "stderr_last": err_lines[-1] if err_lines else "", "stdout_chars": len(proc.stdout)}


# the peak RSS of one command: its own process's children (the benchmark's other children do not count)
PEAK_OF = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
           "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)")


# ------------------------------------------------------------------ report


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Ratios against the bounds and the original (the numbers docs/performance.md tabulates)."""
    w = res["weights_gb"]
    s: dict[str, Any] = {}
    m = res.get("machine", {})
    for impl in ("libra", "original", "original_bfloat16"):
        r = res.get(impl) or {}
        if "load_s" not in r:
            continue
        s[impl] = {
            "dtype": r["dtype"], "load_s": round(r["load_s"], 2),
            "load_vs_disk": round(r["load_s"] / (w * 1e9 / 1e9 / m["disk_read_gb_s"]), 2) if m else None,
            "peak_rss_gb": round(r["peak_rss_greedy_mb"] * MIB_GB, 2),
            "peak_rss_over_weights": round(r["peak_rss_greedy_mb"] * MIB_GB / w, 3),
            "ttft_s": round(r["ttft_s"], 2), "greedy_s": round(r["greedy_s"], 2),
            "decode_tokens_per_s": r["decode_tokens_per_s"] and round(r["decode_tokens_per_s"], 3),
        }
        if m and r.get("dtype") == "bfloat16":
            flops = 2 * res["llm_params"] * res["prompt_tokens"]
            s[impl]["prefill_vs_compute_bound"] = round(flops / (m["gemm_gflops_bfloat16"] * 1e9) / r["ttft_s"], 3)
            s[impl]["decode_vs_bandwidth_bound"] = round(
                (r["decode_tokens_per_s"] or 0) / (m["gemv_bf16_gb_s"] * 1e9 / (res["llm_params"] * 2)), 3)
        if "beam10_s" in r:
            s[impl]["beam10_s"] = round(r["beam10_s"], 2)
            s[impl]["beam10_peak_rss_gb"] = round(r["peak_rss_beam10_mb"] * MIB_GB, 2)
            s[impl]["beam10_growth_gb"] = round(r["beam10_growth_mb"] * MIB_GB, 3)
    for impl in ("original", "original_bfloat16"):
        if "libra" in s and impl in s:
            s[f"greedy_speedup_vs_{impl}"] = round(s[impl]["greedy_s"] / s["libra"]["greedy_s"], 3)
    cli = res.get("cli_no_dtype")
    if cli and cli.get("peak_rss_mb"):
        s["cli_no_dtype"] = {"rc": cli["rc"], "peak_rss_gb": round(cli["peak_rss_mb"] * MIB_GB, 2),
                             "peak_rss_over_weights": round(cli["peak_rss_mb"] * MIB_GB / w, 3),
                             "wall_s": round(cli["wall_s"], 1), "stderr_last": cli["stderr_last"]}
    return s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--out", type=Path, default=Path("/work/bigckpt"))
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--beams", type=int, default=10, help="beam width of the paper-decoding run (0: skip it)")
    parser.add_argument("--original-beams", type=int, default=None,
                        help="the original's beam run (default --beams; 0 skips it: at 7B its per-beam prompt copies "
                             "need more than 24 GB)")
    parser.add_argument("--dtype", default="bfloat16", help="libra's --dtype in the libra stage")
    parser.add_argument("--stages", default="build,machine,libra,original,cli")
    parser.add_argument("--original-python", default=None, help="python of the original code's venv")
    parser.add_argument("--original-src", default=None, help="checkout of the original Libra code")
    parser.add_argument("--original-dtype", default="float16",
                        help="float16: the original's own CPU path; bfloat16: its weights cast after loading (on a CPU "
                             "without AVX512-FP16 its float16 matmuls are too slow to finish a 7B prefill)")
    parser.add_argument("--cli-timeout", type=int, default=1800)
    parser.add_argument("--original-timeout", type=float, default=None, help="seconds before the original's run is stopped")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    stages = set(args.stages.split(","))
    s = SHAPES[args.shape]
    res: dict[str, Any] = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    res.update(shape=args.shape, name=s["name"], tokens=args.tokens, uptime_load=os.getloadavg())
    t0 = time.perf_counter()
    folder = build(args.shape, args.out)
    res["build_s"] = time.perf_counter() - t0 if "build" in stages else res.get("build_s")
    from libra_cli.checkpoint.memory import weight_files

    files = weight_files(folder, "bfloat16")
    res["weights_gb"] = files.stored_bytes / 1e9
    res["llm_params"] = files.params
    tower = s["tower"]
    res["prompt_tokens"] = (tower["image"] // 14) ** 2 + 66
    print(f"{s['name']}: {files.params / 1e9:.2f} B parameters, {res['weights_gb']:.2f} GB in bf16 at {folder}", file=sys.stderr)
    if "machine" in stages:
        res["machine"] = machine(folder, res["prompt_tokens"], s["hidden"], s["intermediate"], files.stored_bytes)
        print(f"machine: {json.dumps(res['machine'])}", file=sys.stderr)
    env = {"PYTHONPATH": str(REPO)}
    if "libra" in stages:
        res["libra"] = child(sys.executable, LIBRA_CHILD + MEASURE, folder, args.tokens, args.dtype, env, args.beams)
        print(f"libra: {json.dumps(res['libra'])}", file=sys.stderr)
    if "original" in stages and args.original_python:
        oenv = {"LIBRA_ORIGINAL_SRC": str(args.original_src), "PYTHONPATH": ""}
        beams = args.beams if args.original_beams is None else args.original_beams
        key = "original" if args.original_dtype == "float16" else f"original_{args.original_dtype}"
        res[key] = child(args.original_python, ORIGINAL_CHILD + MEASURE, folder, args.tokens, args.original_dtype, oenv,
                         beams, args.original_timeout)
        print(f"{key}: {json.dumps(res[key])}", file=sys.stderr)
    if "cli" in stages:
        res["cli_no_dtype"] = cli(folder, args.tokens, args.cli_timeout)
        print(f"cli: {json.dumps(res['cli_no_dtype'])}", file=sys.stderr)
    res["summary"] = summarise(res)
    print(json.dumps(res["summary"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
