"""Build the demo model that ships in the package (libra_cli/resources/demo/model), with libra's own tools.

A tiny Libra (Llama 2x64 + TAC + a 12-layer, 32-wide DINOv2 tower at 70 px; about 1.5 MB) is built
with ``tests.builders.tiny`` and fine-tuned with ``libra train finetune`` (full
fine-tune, no LoRA) on synthetic findings made of the sentences in the tokenizer's corpus, so that
``libra demo`` prints report-like text. It cannot read X-rays: the text does not describe the images.

    python scripts/make_demo_model.py --tokenizer ../shared/fixtures/tokenizer   # rewrites the demo model

Deterministic for a given torch version (seeded); the committed files are what users get.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.builders (test-only builders: not in the wheel)
DEMO = REPO / "libra_cli" / "resources" / "demo" / "model"
EXAMPLES = REPO / "libra_cli" / "resources" / "examples"
QUERY = "Provide a detailed description of the findings in the radiology image."


def findings(sentences: list[str], rng: random.Random) -> str:
    return " ".join(rng.sample(sentences, rng.randint(2, 3)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="SentencePiece Llama tokenizer folder with corpus.txt")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--log-steps", type=int, default=50)
    args = ap.parse_args()
    from PIL import Image

    from tests.builders.tiny import make_tiny_libra, make_vision_tower

    tok = Path(args.tokenizer)
    sentences = [s.strip() for s in (tok / "corpus.txt").read_text().splitlines() if s.strip()]
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        make_vision_tower(root / "base" / "vision_tower", "dinov2", seed=0)
        make_tiny_libra(root / "base", tok, tower="./vision_tower", seed=0)
        (root / "images").mkdir()
        for name in ("current.jpg", "prior.jpg"):
            im = Image.open(EXAMPLES / name)
            im.thumbnail((140, 140))
            im.save(root / "images" / name)
        records = [{"id": f"d{i}", "image": ["current.jpg", "prior.jpg"] if i % 2 else ["current.jpg"],
                    "conversations": [{"from": "human", "value": "<image>\n" + QUERY},
                                      {"from": "gpt", "value": findings(sentences, rng)}]} for i in range(256)]
        (root / "train.json").write_text(json.dumps(records))
        out = root / "run"
        cmd = [sys.executable, "-m", "libra_cli", "train", "finetune", "--recipe", "tiny-cpu",
               "--set", f"model_name_or_path={root / 'base'}", "--set", f"data_path={root / 'train.json'}",
               "--set", f"image_folder={root / 'images'}", "--set", f"output_dir={out}",
               "--set", "lora_enable=false", "--set", "freeze_mm_mlp_adapter=false",
               "--set", f"max_steps={args.steps}", "--set", f"save_steps={args.steps}",
               "--set", "learning_rate=3e-3", "--set", "global_batch_size=8", "--set", "per_device_train_batch_size=8",
               "--set", f"logging_steps={args.log_steps}", "--set", "metric_for_best_model=null"]
        subprocess.run(cmd, check=True)
        if DEMO.exists():
            shutil.rmtree(DEMO)
        DEMO.mkdir(parents=True)
        for f in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json"):
            if (out / f).is_file():
                shutil.copy(out / f, DEMO / f)
        cfg = json.loads((DEMO / "config.json").read_text())
        cfg["mm_vision_tower"] = "./vision_tower"
        cfg["libra_demo"] = True
        (DEMO / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        shutil.copytree(root / "base" / "vision_tower", DEMO / "vision_tower")
    for f in DEMO.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)
    print(f"wrote {DEMO} ({sum(f.stat().st_size for f in DEMO.rglob('*') if f.is_file()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
