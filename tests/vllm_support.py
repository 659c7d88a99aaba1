"""Shared helpers for the vLLM tests: tiny head_dim-64 Libra models and a varied set of studies.

vLLM's CPU attention rejects head_dim 16 (the shared tiny fixture), so these models have
hidden 128 / 2 heads (head_dim 64). The studies are 32 distinct image pairs made from the two
shared X-rays (rotations, crops, flips, contrast, non-square and 16-bit PNG variants), half with
a prior and half current-only, with a few other questions and clinical contexts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

N_STUDIES = 32
HEAD64 = {"hidden": 128, "heads": 2, "kv_heads": 2, "intermediate": 256}


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken install (CUDA torchvision beside CPU torch)
        return False
    return True


def make_models(root: Path, fixtures: Path) -> dict[str, Path]:
    """``tac``: TAC + the shared tiny RAD-DINO; ``clip``: mlp2x_gelu + a tiny CLIP (select layer -2)."""
    from tests.builders.tiny import make_tiny_libra, make_vision_tower

    shutil.copytree(fixtures / "tiny-rad-dino", root / "tiny-rad-dino", dirs_exist_ok=True)
    make_vision_tower(root / "tiny-clip", kind="clip", seed=3)
    tok = fixtures / "tokenizer"
    return {
        "tac": make_tiny_libra(root / "tac", tok, connector="TAC", tower="../tiny-rad-dino", seed=1, **HEAD64),
        "clip": make_tiny_libra(root / "clip", tok, connector="mlp2x_gelu", tower="../tiny-clip", seed=2, **HEAD64),
    }


def make_images(root: Path, cxr: Path, n: int = 20) -> list[Path]:
    """``n`` distinct X-ray images (JPEG and PNG, square and not, one 16-bit) from the two shared ones."""
    from PIL import Image, ImageOps

    root.mkdir(parents=True, exist_ok=True)
    base = [Image.open(cxr / "current.jpg").convert("L"), Image.open(cxr / "prior.jpg").convert("L")]
    out: list[Path] = []
    for i in range(n):
        img = base[i % 2]
        w, h = img.size
        if i % 5 == 1:
            img = img.rotate(3 * (i % 7) - 9, resample=Image.Resampling.BILINEAR)
        if i % 5 == 2:
            img = img.crop((w // 10, h // 12, w - w // (8 + i % 3), h - h // 9))
        if i % 5 == 3:
            img = ImageOps.mirror(img)
        if i % 5 == 4:
            img = ImageOps.autocontrast(img, cutoff=i % 4)
        if i % 3 == 0:
            img = img.resize((max(16, w * (9 + i % 4) // 12), max(16, h * (10 + i % 3) // 12)))
        path = root / f"img{i:02d}.{'png' if i % 4 == 0 else 'jpg'}"
        if i == 8:  # 16-bit grayscale PNG: min-max scaled by libra's loader
            arr = (np.asarray(img, dtype=np.uint16) * 200 + 300).astype(np.uint16)
            Image.fromarray(arr).save(path)
        else:
            img.convert("RGB").save(path)
        out.append(path)
    return out


def studies(images: list[Path]) -> list[Any]:
    """32 samples: even ones with a prior, odd ones current-only (dummy prior); a few questions/contexts."""
    from libra_cli.generation import Sample

    out = []
    for i in range(N_STUDIES):
        cur = images[i % len(images)]
        prior = images[(i * 7 + 3) % len(images)] if i % 2 == 0 else None
        query = "Has anything changed since the prior study?" if i % 8 == 5 else None
        context = "Dyspnea. PA and lateral views." if i % 6 == 2 else None
        out.append(Sample(str(cur), str(prior) if prior else None, query, context, id=f"s{i}"))
    return out
