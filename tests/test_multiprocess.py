"""Several processes on CPU (gloo): DDP training through ``--distributed ddp`` and a sharded ``libra batch``.

Note: ``accelerate launch --cpu --num_processes N`` starts ONE process (accelerate runs several CPU
processes only through mpirun), so the launches here use ``--distributed ddp`` (accelerate's multi-GPU
launcher, which falls back to gloo on CPU) and ``torchrun``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared"
CXR = SHARED / "data" / "cxr"
ANSWERS = ["The heart size is normal. No effusion.", "Stable cardiomegaly. Lungs are clear.",
           "Interval improvement of the left effusion.", "No acute change compared with prior."]


# the launchers of the environment running the tests, activated or not (`.venv/bin/python -m pytest`)
PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _script(name: str) -> str | None:
    return shutil.which(name, path=PATH)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": PATH, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from PIL import Image

    from tests.builders.tiny import make_tiny_libra

    root = tmp_path_factory.mktemp("mp")
    shutil.copytree(SHARED / "fixtures" / "tiny-rad-dino", root / "tiny-rad-dino")
    make_tiny_libra(root / "base", SHARED / "fixtures" / "tokenizer")
    (root / "images").mkdir()
    for name in ("current.jpg", "prior.jpg"):
        im = Image.open(CXR / name)
        im.thumbnail((160, 160))
        im.save(root / "images" / name)
    records = [{"id": f"s{i}", "image": ["current.jpg", "prior.jpg"] if i % 3 else ["current.jpg"],
                "conversations": [{"from": "human", "value": "<image>\nDescribe the findings."},
                                  {"from": "gpt", "value": ANSWERS[i % 4]}]} for i in range(8)]
    (root / "train.json").write_text(json.dumps(records))
    return root


def _recipe(root: Path, out: Path) -> list[str]:
    return ["--recipe", "tiny-cpu", "--set", f"model_name_or_path={root / 'base'}",
            "--set", f"data_path={root / 'train.json'}", "--set", f"image_folder={root / 'images'}",
            "--set", "max_steps=2", "--set", "save_steps=2", "-o", str(out)]


def test_seed_fixes_lora_init(tiny):
    """LoRA A is drawn from the recipe seed, not whatever RNG state came before (each DDP rank had its own)."""
    from libra_cli.training.model import build_model
    from libra_cli.training.recipe import load_recipe

    recipe = load_recipe("tiny-cpu", "finetune", {"model_name_or_path": str(tiny / "base"),
                                                  "data_path": str(tiny / "train.json"),
                                                  "image_folder": str(tiny / "images"),
                                                  "output_dir": str(tiny / "unused")})
    sums = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        m = build_model(recipe, "finetune").model
        sums.append({n: p.detach().clone() for n, p in m.named_parameters() if "lora_A" in n})
    assert sums[0] and all(torch.equal(sums[0][k], sums[1][k]) for k in sums[0])


def test_recipe_decides_mixed_precision(monkeypatch):
    """A preset's ``mixed_precision: bf16`` (ACCELERATE_MIXED_PRECISION) must not autocast a float32 recipe."""
    from libra_cli.commands.train import recipe_precision
    from libra_cli.training.recipe import Recipe

    recipe = Recipe(bf16=False, fp16=False)
    assert (recipe.mixed_precision, Recipe(bf16=True).mixed_precision, Recipe(fp16=True).mixed_precision) == \
        ("no", "bf16", "fp16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    recipe_precision(recipe)  # the CLI boundary, in every launched process
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    recipe_precision(recipe)  # not launched by accelerate: nothing set
    assert "ACCELERATE_MIXED_PRECISION" not in os.environ


@pytest.mark.skipif(_script("accelerate") is None, reason="accelerate CLI not installed (pip install accelerate)")
def test_ddp_two_processes_finetune(tiny):
    """``--distributed ddp --num-processes 2`` on CPU: 2 ranks, accumulation 1, one summary, output loads."""
    out = tiny / "ddp"
    r = subprocess.run([sys.executable, "-m", "libra_cli", "train", "finetune", *_recipe(tiny, out),
                        "--distributed", "ddp", "--num-processes", "2"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # rank 0 alone prints the summary and the output folder
    assert r.stdout.splitlines().count(str(out)) == 1 and r.stderr.count("done:") == 1
    ckpt = out / "checkpoint-2"
    assert (ckpt / "rng_state_0.pth").is_file() and (ckpt / "rng_state_1.pth").is_file()  # really 2 ranks
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["train_batch_size"] == 2
    losses = [h for h in state["log_history"] if "loss" in h]
    assert len(losses) == 2 and losses[0]["epoch"] == 0.5  # 8 records / global batch 4 = 2 steps per epoch
    from libra_cli.checkpoint import load_model

    assert load_model(str(out), model_base=str(tiny / "base"), device="cpu").kind == "lora"


@pytest.mark.skipif(_script("torchrun") is None, reason="torchrun not installed")
def test_batch_two_processes_merge_equals_one(tmp_path):
    """Two torchrun ranks shard, then merge into the byte-identical file of a single-process run."""
    q = tmp_path / "q.jsonl"
    rows = [{"question_id": i, "image": ["current.jpg", "prior.jpg"] if i % 3 else ["current.jpg"],
             **({"text": "What changed since the prior study?"} if i % 2 else {})} for i in range(5)]
    rows.append({"question_id": 5, "image": ["missing.jpg"], "text": "x"})
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [str(q), "--image-folder", str(CXR), "--model", str(SHARED / "fixtures" / "tiny-libra-tac"),
            "--max-new-tokens", "6", "--batch-size", "2"]
    one, two = tmp_path / "one" / "a.jsonl", tmp_path / "two" / "a.jsonl"
    r1 = subprocess.run([sys.executable, "-m", "libra_cli", "batch", *args, "--out", str(one)],
                        env=_env(), capture_output=True, text=True, timeout=300)
    r2 = subprocess.run([_script("torchrun"), "--nproc-per-node", "2", "-m", "libra_cli", "batch", *args, "--out", str(two)],
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert r1.returncode == 1 and r2.returncode == 1, r2.stderr[-3000:]  # the missing image fails both
    assert len(one.read_text().splitlines()) == 5
    assert two.read_bytes() == one.read_bytes()
    err = Path(str(one) + ".errors.jsonl")
    assert Path(str(two) + ".errors.jsonl").read_bytes() == err.read_bytes()
    assert not list(two.parent.glob("*shard*"))  # shard files removed after the merge
