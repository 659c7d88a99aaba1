"""Everything issue 15 asks to measure on a GPU, in one command (< 8 minutes on one H200).

    python benchmarks/gpu_suite.py                      # 7B-shaped Libra on cuda, bfloat16
    python benchmarks/gpu_suite.py --shape tiny --device cpu --tokens 16   # the same stages, here

Stages, in priority order, each in its own try/except (a failure is recorded in the JSON and the
rest still runs; a stage that would start past ``--budget-s`` is recorded as skipped):

1. ``env``: versions, the card, its memory bandwidth from ``get_device_properties`` (memory clock
   x bus width) and a device-to-device copy bandwidth measured in this run.
2. ``fixture``: the shared fixture (tiny-libra-tac) in float32 on the device: greedy, 3-beam and
   current-only token ids and the logits against what the original code wrote
   (tests/test_fixture_parity.py), eager and with ``compile``.
3. ``build``: a random Libra of the Meditron/Llama-2-7B shape (hidden 4096, 32 layers, 32 heads,
   MLP 11008, vocab 32000) + RAD-DINO-base tower (DINOv2 base, 518 px, patch 14: 1,369 image
   tokens) + TAC, built in bfloat16 directly on the device (no checkpoint on disk).
4. ``encode`` / ``prefill``: the example X-ray pair through the real preprocessing, the tower and
   TAC; the prompt (1,369 placeholders + the libra_v1 template) prefilled at batch 1 and 8.
5. ``decode``: greedy tokens/s at batch 1 / 8 / 32 through ``libra_cli.generation.generate``,
   eager and compiled (static KV cache + torch.compile), peak memory, the fraction of the
   memory-bandwidth bound (weight + KV bytes read per step / step time vs the card's bandwidth).
6. ``beam``: 10 beams (length penalty 2, no-repeat 3-grams) at batch 1 and 8: throughput and peak
   memory against greedy at the same batch; once more at batch 1 with transformers' own KV
   handling (prompt copied per beam, ``LIBRA_SHARED_PREFIX=0``) for comparison.
7. ``judges``: GREEN / GREEN-RadPhi2 / CRIMSON pairs/s on hf (vs no shared prefix) and vLLM (benchmarks/bench_judges.py).

Writes ``$OUT/gpu_suite.json`` when ``$OUT`` is set, else ``benchmarks/results/gpu_suite-<device>.json``,
and prints a table. Must hold (issue 15): batch-1 compiled decode >= 60% of the bandwidth bound;
batch-32 greedy >= 10x batch 1; 10 beams < 2x the memory of greedy at the same batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LIBRA_SHARED", REPO.parent / "shared"))
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES: dict[str, dict[str, Any]] = {
    "7b": {"llm": dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, vocab=32000),
           "tower": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, image_size=518,
                         patch_size=14)},
    # CPU-sized LLM with the real image-token count (518 px / patch 14 = 1,369), for bench_beam.py
    "small": {"llm": dict(hidden=256, layers=4, heads=4, kv_heads=4, intermediate=512, vocab=32000),
              "tower": dict(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, mlp_ratio=2, image_size=518,
                            patch_size=14)},
    "tiny": {"llm": dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1000),
             "tower": dict(hidden_size=32, num_hidden_layers=12, num_attention_heads=2, mlp_ratio=2, image_size=70,
                           patch_size=14)},
}


class Suite:
    """Runs stages under a time budget and records each one's result or error."""

    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.results: dict[str, Any] = {"stages": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @contextmanager
    def stage(self, name: str, need_s: float = 0.0) -> Iterator[dict[str, Any] | None]:
        rec: dict[str, Any] = {}
        self.results["stages"][name] = rec
        if self.elapsed() + need_s > self.budget_s:
            rec.update(status="skipped", reason=f"time budget ({self.budget_s:.0f} s) reached at {self.elapsed():.0f} s")
            print(f"[{self.elapsed():6.1f}s] {name}: skipped (budget)", flush=True)
            yield None
            return
        t = time.perf_counter()
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        try:
            yield rec
            rec["status"] = rec.get("status", "ok")
        except Exception as exc:  # noqa: BLE001 - one failing stage must not lose the others
            rec.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-3000:])
            print(f"    {name} failed: {type(exc).__name__}: {exc}", flush=True)
        finally:
            rec["seconds"] = round(time.perf_counter() - t, 2)
            _free()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t


def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.startswith("cuda") else None


# ----------------------------------------------------------------------------- stages


def stage_env(rec: dict[str, Any], device: str) -> None:
    import transformers

    rec.update(python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
               device=device, cpu_count=os.cpu_count())
    try:
        import flash_attn  # noqa: F401

        rec["flash_attn"] = getattr(flash_attn, "__version__", "yes")
    except ImportError:
        rec["flash_attn"] = None
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        rec.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count)
        clock_khz, bus_bits = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)
        if clock_khz and bus_bits:  # DDR/HBM: two transfers per clock
            rec["bandwidth_spec_GBs"] = round(2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, 1)
            rec.update(memory_clock_khz=clock_khz, memory_bus_width_bits=bus_bits)
    n = (2 << 30) if device.startswith("cuda") else (256 << 20)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _, s = _timed(lambda: [dst.copy_(src) for _ in range(10)])
    rec["bandwidth_copy_GBs"] = round(10 * 2 * n / s / 1e9, 1)  # read + write


def stage_fixture(rec: dict[str, Any], device: str, compile_too: bool) -> None:
    exp = json.loads((SHARED / "fixtures/expected/tiny-libra-tac.json").read_text())
    cxr = SHARED / "data/cxr"
    # float32 parity: no TF32 in matmuls or the tower's patch convolution (restored for the 7B stages)
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        _fixture_checks(rec, device, compile_too, exp, cxr)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32


def _fixture_checks(rec: dict[str, Any], device: str, compile_too: bool, exp: dict[str, Any], cxr: Path) -> None:
    import numpy as np

    from libra_cli.checkpoint import load_model
    from libra_cli.generation import GenerationSettings, generate_report

    lm = load_model(str(SHARED / "fixtures/tiny-libra-tac"), dtype="float32", device=device)
    cases = {"greedy": (True, GenerationSettings(max_new_tokens=24)),
             "beam": (True, GenerationSettings(max_new_tokens=24, num_beams=3, length_penalty=2.0, no_repeat_ngram_size=3)),
             "greedy_current_only": (False, GenerationSettings(max_new_tokens=24))}
    for mode in ("eager", "compile") if compile_too else ("eager",):
        _use_mode(lm, mode)
        for key, (prior, st) in cases.items():
            r = generate_report(lm, cxr / "current.jpg", cxr / "prior.jpg" if prior else None, settings=st)
            want = exp[key]["sequences"][0]["new_token_ids"]
            rec[f"{mode}_{key}_ids_equal"] = r.token_ids == want
            if r.token_ids != want:
                rec[f"{mode}_{key}_ids"] = r.token_ids
    _use_mode(lm, "eager")
    from libra_cli.generation import Sample, prepare_batch

    b = prepare_batch(lm, [Sample(cxr / "current.jpg", cxr / "prior.jpg")])
    with torch.no_grad():
        logits = lm.model(input_ids=b.input_ids.to(device), pixel_values=b.pixel_values.to(device)).logits.float().cpu()
    want = np.load(SHARED / "fixtures/expected/tiny-libra-tac/logits_real.npy")
    rec["logits_max_abs_diff"] = float((logits - torch.from_numpy(want)).abs().max())
    rec["passed"] = all(v for k, v in rec.items() if k.endswith("_ids_equal")) and rec["logits_max_abs_diff"] <= 1e-4


def _set_compile(lm: Any, on: bool) -> None:
    """Compiled decoding is a property of the loaded model (``load_model(compile=...)``)."""
    if not hasattr(lm, "compile"):
        raise RuntimeError("this libra_cli has no compiled decoding (LoadedModel.compile)")
    lm.compile = on


def _use_mode(lm: Any, mode: str) -> None:
    if mode == "compile" or hasattr(lm, "compile"):
        _set_compile(lm, mode == "compile")


def build_model(shape: str, device: str, dtype: Any) -> Any:
    """A random 7B-shaped (or tiny) Libra + DINOv2 tower + TAC, initialised on the device in ``dtype``."""
    import transformers as tf

    from libra_cli.checkpoint.load import LoadedModel
    from libra_cli.images import ImageProcessorConfig
    from libra_cli.model.encoders import VisionTower
    from libra_cli.model.modeling import LibraLlamaForCausalLM
    from tests.builders.tiny import libra_config

    llm, tw = SHAPES[shape]["llm"], SHAPES[shape]["tower"]
    cfg = libra_config("libra", "TAC", "random-rad-dino-base", mm_hidden=tw["hidden_size"], **llm)
    cfg.max_position_embeddings = 4096
    cfg.use_cache = True
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = LibraLlamaForCausalLM._from_config(cfg, dtype=dtype)
        tower = tf.Dinov2Model(tf.Dinov2Config(**tw)).to(dtype)
    proc = ImageProcessorConfig(size={"shortest_edge": tw["image_size"]},
                                crop_size={"height": tw["image_size"], "width": tw["image_size"]})
    model.set_vision_tower(VisionTower(tower.eval().requires_grad_(False), proc, "all", "patch", name="random"))
    model.eval().requires_grad_(False)
    tok_dir = SHARED / "fixtures/tokenizer"
    tokenizer = tf.AutoTokenizer.from_pretrained(str(tok_dir))
    return LoadedModel.from_model(model, tokenizer, tok_dir, "libra_v1", image_processor=proc, name=f"random-{shape}",
                                  dtype=dtype)


def llm_weight_bytes(lm: Any) -> tuple[int, int]:
    """(bytes of LLM weights read per decode step without the embedding table, one embedding row's bytes)."""
    model = lm.model
    emb = model.get_input_embeddings().weight
    skip = {id(p) for p in model.model.mm_projector.parameters()} | {id(emb)}
    if model.vision_tower is not None:
        skip |= {id(p) for p in model.vision_tower.parameters()}
    total = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)
    return total, emb.shape[1] * emb.element_size()


def kv_bytes_per_token(lm: Any) -> int:
    c = lm.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * lm.model.get_input_embeddings().weight.element_size()


def stage_encode(rec: dict[str, Any], lm: Any) -> Any:
    from libra_cli.images import load_and_preprocess

    cxr = SHARED / "data/cxr"
    pix, s = _timed(lambda: [load_and_preprocess(cxr / f, lm.image_processor, cache=False) for f in ("current.jpg", "prior.jpg")])
    rec["preprocess_pair_ms"] = round(s * 1e3, 1)
    pv = torch.from_numpy(__import__("numpy").stack(pix))[None].to(lm.device, lm.dtype)
    with torch.inference_mode():
        lm.model.get_image_features(pv)  # warm-up
        feats, s = _timed(lambda: lm.model.get_image_features(pv))
    rec.update(encode_pair_ms=round(s * 1e3, 1), image_tokens=int(feats.shape[1]))
    return feats


def samples_for(lm: Any, n: int) -> list[Any]:
    from libra_cli.generation import Sample

    return [Sample("unused-current.jpg", "unused-prior.jpg", id=str(i)) for i in range(n)]


def stage_prefill(rec: dict[str, Any], lm: Any, feats: Any, batches: list[int]) -> None:
    from libra_cli.generation import prepare_batch

    for bs in batches:
        b = prepare_batch(lm, samples_for(lm, bs), with_pixels=False)
        ids, mask = b.input_ids.to(lm.device), b.attention_mask.to(lm.device)
        with torch.inference_mode():
            emb = lm.model.embed_multimodal(ids, feats.expand(bs, -1, -1))
            lm.model(inputs_embeds=emb, attention_mask=mask, use_cache=True, logits_to_keep=1)
            _, s = _timed(lambda e=emb, m=mask: lm.model(inputs_embeds=e, attention_mask=m, use_cache=True, logits_to_keep=1))
        rec[f"b{bs}"] = {"prompt_tokens": int(ids.shape[1]), "ms": round(s * 1e3, 1),
                         "tokens_per_s": round(bs * ids.shape[1] / s, 1)}
        rec["prompt_tokens"] = int(ids.shape[1])


def run_generate(lm: Any, feats: Any, bs: int, settings: Any) -> tuple[float, int]:
    """Seconds and new tokens per sequence of one ``libra_cli.generation.generate`` call (min length forced)."""
    from libra_cli.generation import generate

    lm.model.generation_config.min_new_tokens = settings.max_new_tokens  # random weights may say EOS early
    reports, s = _timed(lambda: generate(lm, samples_for(lm, bs), settings, image_features=feats.expand(bs, -1, -1)))
    return s, max(len(r.token_ids) for r in reports)


def measure_decode(lm: Any, feats: Any, bs: int, settings: Any, bw: dict[str, float], prompt_len: int,
                   repeats: int = 1) -> dict[str, Any]:
    """Decode step time = (N-token call - 1-token call) / (N - 1), best of ``repeats``, after a warm-up.

    The 1-token call is the prefill + first token, so the difference is the decode steps alone.
    Where that difference is under 10% of the N-token call (noise), the whole call / N is used.
    """
    from dataclasses import replace

    one = replace(settings, max_new_tokens=1)
    first_s, _ = run_generate(lm, feats, bs, settings)  # warm-up (and compilation)
    run_generate(lm, feats, bs, one)
    _peak_reset(lm.device)
    t_n, n = min(run_generate(lm, feats, bs, settings) for _ in range(repeats))
    peak = _peak_gb(lm.device)
    t_1 = min(run_generate(lm, feats, bs, one)[0] for _ in range(repeats))
    steps = max(n - 1, 1)
    decode_s = t_n - t_1
    method = "N-token minus 1-token call"
    if decode_s < 0.1 * t_n:
        decode_s, steps, method = t_n, n, "whole N-token call / N (difference lost in noise)"
    step_s = decode_s / steps
    out: dict[str, Any] = {"batch": bs, "new_tokens": n, "first_call_s": round(first_s, 2), "total_s": round(t_n, 3),
                           "prefill_and_first_token_s": round(t_1, 3), "step_ms": round(step_s * 1e3, 3),
                           "tokens_per_s": round(bs * settings.num_return_sequences / step_s, 1), "step_method": method,
                           "peak_gb": peak}
    kvpt = kv_bytes_per_token(lm)
    if settings.num_beams > 1:  # KV cache held: prompt once per sample (shared) vs once per beam (transformers)
        k = settings.num_beams
        out["kv_GB_shared_prefix"] = round(bs * (prompt_len + k * n) * kvpt / 1e9, 3)
        out["kv_GB_per_beam_copies"] = round(bs * k * (prompt_len + n) * kvpt / 1e9, 3)
    if settings.num_beams == 1:
        out["kv_GB"] = round(bs * (prompt_len + n) * kvpt / 1e9, 3)
        w, row = llm_weight_bytes(lm)
        kv = kvpt * bs * (prompt_len + n / 2)
        step_bytes = w + bs * row + kv
        out["bytes_per_step_GB"] = round(step_bytes / 1e9, 3)
        for k, v in bw.items():
            out[f"bw_fraction_{k}"] = round(step_bytes / step_s / 1e9 / v, 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per decode measurement")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--beam-batches", default="1,8", help="10-beam batches (compared with greedy at the same batch)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: trace only, for CPU tests)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="start no stage after this many seconds")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per measurement (best of)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-judges", action="store_true", help="skip GREEN/CRIMSON pairs/s (benchmarks/bench_judges.py)")
    args = ap.parse_args()

    from libra_cli.generation import GenerationSettings

    os.environ["LIBRA_COMPILE_BACKEND"] = args.compile_backend
    suite = Suite(args.budget_s)
    res = suite.results
    res.update(shape=args.shape, args={k: str(v) for k, v in vars(args).items()},
               started=time.strftime("%Y-%m-%d %H:%M:%S"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    batches = [int(x) for x in args.batches.split(",") if x]
    beam_batches = [int(x) for x in args.beam_batches.split(",") if x]
    modes = ["eager"] if args.no_compile else ["eager", "compile"]
    bw: dict[str, float] = {}
    with suite.stage("env") as rec:
        if rec is not None:
            stage_env(rec, args.device)
            bw = {k.replace("bandwidth_", "").replace("_GBs", ""): rec[k] for k in ("bandwidth_spec_GBs", "bandwidth_copy_GBs")
                  if rec.get(k)}
    with suite.stage("fixture", 30) as rec:
        if rec is not None:
            stage_fixture(rec, args.device, not args.no_compile)
    lm = feats = None
    with suite.stage("build", 30) as rec:
        if rec is not None:
            lm, s = _timed(lambda: build_model(args.shape, args.device, dtype))
            w, _ = llm_weight_bytes(lm)
            rec.update(build_s=round(s, 2), params_B=round(sum(p.numel() for p in lm.model.parameters()) / 1e9, 3),
                       llm_weight_GB=round(w / 1e9, 3), kv_MB_per_token=round(kv_bytes_per_token(lm) / 2**20, 3),
                       memory_gb=_peak_gb(args.device), attn=lm.model.config._attn_implementation)
    if lm is not None:
        with suite.stage("encode", 10) as rec:
            if rec is not None:
                feats = stage_encode(rec, lm)
    if feats is not None:
        with suite.stage("prefill", 10) as rec:
            if rec is not None:
                stage_prefill(rec, lm, feats, [1, 8])
        prompt_len = res["stages"].get("prefill", {}).get("prompt_tokens", 0)
        greedy = GenerationSettings(max_new_tokens=args.tokens)
        beam = GenerationSettings(max_new_tokens=args.tokens, num_beams=10, length_penalty=2.0)
        for mode in modes:
            for bs in batches:
                with suite.stage(f"decode_{mode}_b{bs}", 20) as rec:
                    if rec is not None:
                        _use_mode(lm, mode)
                        rec.update(measure_decode(lm, feats, bs, greedy, bw, prompt_len, args.repeats))
            for bs in beam_batches if mode == "eager" else []:  # beam search never runs compiled
                with suite.stage(f"beam10_b{bs}", 30) as rec:
                    if rec is not None:
                        _use_mode(lm, "eager")
                        rec.update(measure_decode(lm, feats, bs, beam, bw, prompt_len, args.repeats))
            if mode == "eager" and beam_batches:
                with suite.stage(f"beam10_transformers_b{beam_batches[0]}", 30) as rec:  # KV copied per beam
                    if rec is not None:
                        os.environ["LIBRA_SHARED_PREFIX"] = "0"
                        try:
                            rec.update(measure_decode(lm, feats, beam_batches[0], beam, bw, prompt_len, args.repeats))
                        finally:
                            os.environ.pop("LIBRA_SHARED_PREFIX", None)
        if hasattr(lm, "compile"):
            lm.compile = False
    with suite.stage("judges", 120) as rec:  # pairs/s per judge and engine (judge-sized random models)
        if rec is not None and not args.no_judges:
            from benchmarks.bench_judges import run as judges
            lm = feats = None  # noqa: F841 - the Libra model's memory goes back first
            rec.update(judges("real" if args.shape == "7b" else "tiny", ["hf", "vllm"], 32, 256, 8, args.device, ["green", "green:radphi2", "crimson"]))
    res["summary"] = summarise(res, modes, batches, beam_batches)
    res["total_s"] = round(suite.elapsed(), 1)
    out = write(res, args)
    print_table(res)
    print(f"wrote {out}")
    return 0


def summarise(res: dict[str, Any], modes: list[str], batches: list[int], beam_batches: list[int]) -> dict[str, Any]:
    """The must-hold checks of issue 15, from whatever stages finished."""
    st = res["stages"]
    s: dict[str, Any] = {}
    best = st.get("decode_compile_b1", {}) if st.get("decode_compile_b1", {}).get("status") == "ok" else {}
    frac = best.get("bw_fraction_spec", best.get("bw_fraction_copy"))
    if frac is not None:
        s["b1_compile_bw_fraction"] = frac
        s["b1_compile_bw_fraction_ok(>=0.6)"] = frac >= 0.6
    for mode in modes:
        b1, bmax = st.get(f"decode_{mode}_b1", {}), st.get(f"decode_{mode}_b{max(batches)}", {})
        if b1.get("tokens_per_s") and bmax.get("tokens_per_s"):
            r = bmax["tokens_per_s"] / b1["tokens_per_s"]
            s[f"{mode}_b{max(batches)}_over_b1"] = round(r, 2)
            s[f"{mode}_b{max(batches)}_over_b1_ok(>=10)"] = r >= 10
        for bs in beam_batches if mode == "eager" else []:
            g, bm = st.get(f"decode_{mode}_b{bs}", {}), st.get(f"beam10_b{bs}", {})
            if g.get("peak_gb") and bm.get("peak_gb"):
                w = st.get("build", {}).get("memory_gb") or 0.0
                s[f"{mode}_b{bs}_beam10_over_greedy_peak"] = round(bm["peak_gb"] / g["peak_gb"], 2)
                if g["peak_gb"] > w:
                    r = (bm["peak_gb"] - w) / (g["peak_gb"] - w)
                    s[f"{mode}_b{bs}_beam10_over_greedy_beyond_weights"] = round(r, 2)
                    s[f"{mode}_b{bs}_beam10_memory_ok(<2x beyond weights)"] = r < 2
    s["errors"] = [k for k, v in st.items() if v.get("status") == "error"]
    s["skipped"] = [k for k, v in st.items() if v.get("status") == "skipped"]
    return s


def write(res: dict[str, Any], args: argparse.Namespace) -> Path:
    if args.out:
        out = args.out
    elif os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_suite.json"
    else:
        out = REPO / "benchmarks/results" / f"gpu_suite-{args.shape}-{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(out)
    return out


def print_table(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"libra gpu_suite ({res['shape']}, {res['stages'].get('env', {}).get('gpu', res['args']['device'])})")
    for c in ("stage", "status", "s", "batch", "tokens/s", "step ms", "peak GB", "bw fraction", "notes"):
        t.add_column(c)
    for name, r in res["stages"].items():
        frac = r.get("bw_fraction_spec", r.get("bw_fraction_copy"))
        notes = r.get("error") or r.get("reason") or ""
        if name == "fixture" and "passed" in r:
            notes = f"parity {'PASS' if r['passed'] else 'FAIL'}, logits diff {r.get('logits_max_abs_diff', 0):.1e}"
        if name == "prefill":
            notes = ", ".join(f"{k}: {v['ms']} ms ({v['prompt_tokens']} tok)" for k, v in r.items() if k.startswith("b"))
        if name == "build":
            notes = f"{r.get('params_B')} B params, {r.get('llm_weight_GB')} GB LLM weights" if "params_B" in r else notes
        t.add_row(name, r.get("status", ""), str(r.get("seconds", "")), str(r.get("batch", "")), str(r.get("tokens_per_s", "")),
                  str(r.get("step_ms", "")), str(r.get("peak_gb", "")), "" if frac is None else f"{frac:.2f}", notes[:70])
    Console(width=200).print(t)
    print(json.dumps(res["summary"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
