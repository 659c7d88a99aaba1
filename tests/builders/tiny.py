"""Tiny random Libra checkpoints in the original on-disk layout, for tests, benchmarks and smoke runs.

Nothing can be downloaded in CI, so every layout the loader accepts is produced here from a
config: full checkpoints for every backbone x connector, random encoders (DINOv2/CLIP/SigLIP).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

BACKBONE_KW: dict[str, dict[str, Any]] = {
    "libra": {},
    "libra_mistral": {"sliding_window": None},
    "libra_phi3": {"pad_token_id": 0},
    "libra_gemma": {"head_dim": 16},
    "libra_qwen2": {},
    "libra_qwen3": {"head_dim": 16},
}
ARCH = {
    "libra": "LibraLlamaForCausalLM",
    "libra_mistral": "LibraMistralForCausalLM",
    "libra_phi3": "LibraPhi3ForCausalLM",
    "libra_gemma": "LibraGemmaForCausalLM",
    "libra_qwen2": "LibraQwen2ForCausalLM",
    "libra_qwen3": "LibraQwen3ForCausalLM",
}


def make_vision_tower(out: str | Path, kind: str = "dinov2", hidden: int = 32, layers: int = 12, image: int = 70,
                      patch: int = 14, seed: int = 0) -> Path:
    """A random encoder folder (weights + preprocessor_config.json)."""
    import transformers as tf

    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=hidden * 2,
                  image_size=image, patch_size=patch)
    if kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(mlp_ratio=2, **{k: v for k, v in common.items() if k != "intermediate_size"}))
        proc = {"image_processor_type": "BitImageProcessor", "size": {"shortest_edge": image},
                "crop_size": {"height": image, "width": image}, "do_center_crop": True, "resample": 3,
                "image_mean": [0.5307] * 3, "image_std": [0.2583] * 3, "rescale_factor": 1 / 255}
    elif kind == "clip":
        model = tf.CLIPVisionModel(tf.CLIPVisionConfig(**common))
        proc = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image},
                "crop_size": {"height": image, "width": image}, "do_center_crop": True, "resample": 3,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
    elif kind == "siglip":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**common))
        proc = {"image_processor_type": "SiglipImageProcessor", "size": {"height": image, "width": image},
                "do_center_crop": False, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    else:
        raise ValueError(f"unknown encoder kind {kind}")
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(proc, indent=2))
    return out


def libra_config(backbone: str = "libra", connector: str = "TAC", tower: str = "../tiny-rad-dino",
                 mm_hidden: int = 32, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 vocab: int = 1000, intermediate: int = 128, select_layer: Any = None, **extra: Any) -> Any:
    """A Libra config object for ``backbone`` with the multimodal fields of the original format."""
    from libra_cli.model.modeling import BACKBONES

    cfg_cls = BACKBONES[backbone][0]
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
              bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    kw.update(BACKBONE_KW[backbone])
    cfg = cfg_cls(**kw)
    mm = dict(
        architectures=[ARCH[backbone]], mm_vision_tower=tower, mm_projector_type=connector, mm_hidden_size=mm_hidden,
        mm_vision_select_layer=select_layer if select_layer is not None else ("all" if connector == "TAC" else -2),
        mm_vision_select_feature="patch", mm_use_im_start_end=False, mm_use_im_patch_token=False,
        image_aspect_ratio="pad", tokenizer_padding_side="right", tokenizer_model_max_length=2048, use_cache=False,
        tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, use_mm_proj=True,
    )
    mm.update(extra)
    for k, v in mm.items():
        setattr(cfg, k, v)
    return cfg


def make_tiny_libra(out: str | Path, tokenizer_dir: str | Path, backbone: str = "libra", connector: str = "TAC",
                    tower: str = "../tiny-rad-dino", seed: int = 0, llava_keys: bool = False, **kw: Any) -> Path:
    """Write a random full checkpoint in the original layout (config + safetensors + tokenizer)."""
    from safetensors.torch import save_file

    from libra_cli.model.modeling import BACKBONES

    torch.manual_seed(seed)
    cfg = libra_config(backbone, connector, tower, **kw)
    model = BACKBONES[backbone][1](cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("model.vision_tower.")}
    if llava_keys:  # the LLaVA lineage's connector naming
        from libra_cli.checkpoint.layout import to_llava_keys

        state = to_llava_keys(state)
    cfg.save_pretrained(out)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    copy_tokenizer(tokenizer_dir, out)
    return out


def copy_tokenizer(src: str | Path, dst: str | Path) -> None:
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(src) / name).is_file():
            shutil.copy(Path(src) / name, Path(dst) / name)
