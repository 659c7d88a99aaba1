"""Training throughput: the tiny recipe on CPU (full stack: Trainer, data, checkpoints) against a bare
forward/backward loop on the same model and batches (measured in the same run), and on a GPU a
7B-shaped random Libra with LoRA in bf16 (step time, tokens/s, peak memory, MFU).

    python benchmarks/bench_train.py                 # CPU, tiny recipe
    python benchmarks/bench_train.py --shape 7b      # GPU: Meditron-7B-shaped LLM + RAD-DINO-shaped encoder + TAC
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

SHAPES = {  # LLM shape, encoder shape (hidden, layers, image, patch)
    "tiny": (dict(hidden=64, layers=2, heads=4, kv_heads=2, vocab=1000, intermediate=128), (32, 12, 70, 14)),
    "7b": (dict(hidden=4096, layers=32, heads=32, kv_heads=32, vocab=32017, intermediate=11008), (768, 12, 518, 14)),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A6000": 155e12}


def make_data(root: Path, n: int = 8) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in ("current.jpg", "prior.jpg"):
        im = Image.open(SHARED / "data" / "cxr" / name)
        im.thumbnail((600, 600))
        im.save(root / "images" / name)
    answer = ("The heart size is normal. There is no focal consolidation, pleural effusion or pneumothorax. "
              "Compared with the prior study the left basilar opacity has resolved. ") * 3
    recs = [{"id": f"s{i}", "image": ["current.jpg", "prior.jpg"],
             "conversations": [{"from": "human", "value": "<image>\nDescribe the findings."},
                               {"from": "gpt", "value": answer}]} for i in range(n)]
    (root / "train.json").write_text(json.dumps(recs))
    return root / "train.json"


def bare_loop(trainer_like: dict, steps: int) -> dict:
    """Forward + backward + AdamW on the same batches, no Trainer: the baseline."""
    model, batches, dev = trainer_like["model"], trainer_like["batches"], trainer_like["device"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    tokens, times = 0, []
    for i in range(steps + 1):
        b = {k: v.to(dev) for k, v in batches[i % len(batches)].items()}
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=dev.startswith("cuda")):
            loss = model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # first step warms up
            times.append(time.perf_counter() - t)
            tokens += int(b["attention_mask"].sum())
    step = sum(times) / len(times)
    return {"step_s": step, "tokens_per_s": tokens / sum(times), "tokens_per_step": tokens / len(times)}


def cpu_tiny(steps: int) -> None:
    from libra_cli.training.data import LibraCollator, LibraTrainDataset, read_records
    from libra_cli.training.recipe import load_recipe
    from libra_cli.training.trainer import build_model, train
    from tests.builders.tiny import make_tiny_libra

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(SHARED / "fixtures" / "tiny-rad-dino", root / "tiny-rad-dino")
        make_tiny_libra(root / "base", SHARED / "fixtures" / "tokenizer")
        data = make_data(root)
        over = {"model_name_or_path": str(root / "base"), "data_path": str(data), "image_folder": str(root / "images"),
                "output_dir": str(root / "out"), "max_steps": steps, "save_steps": 10_000, "logging_steps": 1}
        recipe = load_recipe("tiny-cpu", "finetune", over)
        res = train(recipe, "finetune")
        full_tps = res.tokens_per_s or 0.0
        built = build_model(recipe, "finetune")
        ds = LibraTrainDataset(read_records(data, root / "images"), root / "images", built.tokenizer, built.processor,
                               recipe.conv_mode, built.info["num_image_tokens"], recipe.model_max_length)
        col = LibraCollator(built.tokenizer.pad_token_id, built.info["num_image_tokens"])
        batches = [col([ds[2 * i], ds[2 * i + 1]]) for i in range(4)]
        bare = bare_loop({"model": built.model, "batches": batches, "device": "cpu"}, steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "setting": "tiny recipe, CPU, stage 2 (LoRA r8), batch 2 x accumulation 2, fp32",
        "trainer_tokens_per_s": round(full_tps, 1),
        "bare_loop_tokens_per_s": round(bare["tokens_per_s"], 1),
        "trainer_vs_bare_ratio": round(full_tps / max(bare["tokens_per_s"], 1e-9), 3),
        "bare_step_s": round(bare["step_s"], 4),
        "peak_rss_mb": round(rss, 1),
        "threads": torch.get_num_threads(),
    }, indent=2))


def gpu_7b(steps: int, batch: int, text_tokens: int, shape: str = "7b", dev: str = "cuda") -> None:
    """A random 7B-shaped Libra in bf16 on the GPU with the stage-2 LoRA (r 128, alpha 256), gradient checkpointing."""
    from peft import LoraConfig, get_peft_model

    from libra_cli.checkpoint.tower import load_vision_tower
    from libra_cli.model.modeling import BACKBONES
    from libra_cli.training.model import lora_target_regex
    from tests.builders.tiny import libra_config, make_vision_tower

    llm, (mh, ml, img, patch) = SHAPES[shape]
    vocab = llm["vocab"]
    with tempfile.TemporaryDirectory() as tmp:
        tower_dir = make_vision_tower(Path(tmp) / "tower", hidden=mh, layers=ml, image=img, patch=patch)
        cfg = libra_config("libra", "TAC", str(tower_dir), mm_hidden=mh, **llm)
        cfg.max_position_embeddings = 4096
        torch.set_default_dtype(torch.bfloat16)
        with torch.device(dev):
            lm = BACKBONES["libra"][1](cfg)
        torch.set_default_dtype(torch.float32)
        tower = load_vision_tower(cfg, override=str(tower_dir), dtype=torch.bfloat16, device=dev)
    lm.set_vision_tower(tower)
    lm.requires_grad_(False)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.enable_input_require_grads()
    model = get_peft_model(lm, LoraConfig(r=128, lora_alpha=256, lora_dropout=0.05, target_modules=lora_target_regex(lm),
                                          task_type="CAUSAL_LM"))
    n_patches = int(tower.num_patches)
    ids = torch.randint(3, vocab - 1, (batch, text_tokens))
    ids[:, 1] = -200
    ids = torch.cat([ids[:, :1], torch.full((batch, n_patches), -200), ids[:, 2:]], 1)
    labels = ids.masked_fill(ids < 0, -100)
    pix = torch.randn(batch, 2, 3, img, img)
    batches = [{"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids), "pixel_values": pix}]
    cuda = dev.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    r = bare_loop({"model": model, "batches": batches, "device": dev}, steps)
    n_params = sum(p.numel() for n, p in lm.named_parameters() if "vision_tower" not in n)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    flops = 6 * n_params * r["tokens_per_s"]  # model FLOPs (6N per token; recompute not counted)
    print(json.dumps({
        "setting": f"{shape}-shaped random Libra, LoRA r128 bf16, batch {batch}, {ids.shape[1]} tokens/sample "
                   f"({n_patches} image), gradient checkpointing, {name}",
        "step_s": round(r["step_s"], 3), "tokens_per_s": round(r["tokens_per_s"], 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "params_b": round(n_params / 1e9, 3),
        "mfu": round(flops / peak, 4) if peak else None,
    }, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=["tiny", "7b"], default="tiny")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--text-tokens", type=int, default=300)
    ap.add_argument("--smoke", action="store_true", help="run the GPU code path with the tiny shape on CPU")
    a = ap.parse_args()
    if a.smoke:
        gpu_7b(2, 2, 16, shape="tiny", dev="cpu")
        return
    if a.shape == "tiny":
        cpu_tiny(a.steps)
    else:
        if not torch.cuda.is_available():
            sys.exit("--shape 7b needs a CUDA GPU")
        gpu_7b(a.steps, a.batch, a.text_tokens)


if __name__ == "__main__":
    main()
