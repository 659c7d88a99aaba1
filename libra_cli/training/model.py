"""The model being trained: a Libra LM (from a Libra checkpoint or a plain LLM + encoder) with only the
stage's parameters trainable, put together by ``checkpoint.assemble`` as for inference."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, set_seed

from libra_cli.checkpoint import layout
from libra_cli.checkpoint.hub import checkpoint_folder, hub_folder
from libra_cli.checkpoint.load import assemble, read_config
from libra_cli.checkpoint.runtime import DTYPES, resolve_attention
from libra_cli.checkpoint.tower import resolve_vision_tower_path
from libra_cli.console import quiet_transformers
from libra_cli.errors import InputError, ModelLoadError
from libra_cli.images import ImageProcessorConfig
from libra_cli.model import modeling
from libra_cli.training.recipe import Recipe


@dataclass
class Built:
    model: PreTrainedModel  # the Libra LM (LoRA-wrapped in stage 2)
    base: PreTrainedModel  # the Libra LM itself
    tokenizer: PreTrainedTokenizerBase
    processor: ImageProcessorConfig
    config: PretrainedConfig
    folder: str
    info: dict[str, Any] = field(default_factory=dict)


def _libra_config(folder: str, recipe: Recipe) -> PretrainedConfig:
    """The Libra config of ``folder``; a plain LLM config gets the multimodal fields of the recipe."""
    config = read_config(folder)
    if config.model_type in modeling.BACKBONES:
        if recipe.vision_tower:
            config.mm_vision_tower = recipe.vision_tower
        return config
    if config.model_type not in modeling.BASE_TO_LIBRA:
        raise ModelLoadError(f"{folder}: model_type {config.model_type!r} is neither a Libra model nor a supported LLM")
    if not recipe.vision_tower:
        raise InputError(f"{folder} is a plain LLM; set vision_tower (e.g. microsoft/rad-dino) in the recipe")
    libra_type = modeling.BASE_TO_LIBRA[config.model_type]
    base = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures", "transformers_version")}
    cfg = modeling.BACKBONES[libra_type][0](**base)
    tower_cfg = AutoConfig.from_pretrained(hub_folder(recipe.vision_tower, allow_patterns=["*.json"], what="vision tower"),
                                           trust_remote_code=False)
    tower_cfg = getattr(tower_cfg, "vision_config", tower_cfg)
    cfg.architectures = [modeling.BACKBONES[libra_type][1].__name__]
    mm = dict(mm_vision_tower=recipe.vision_tower, mm_projector_type=recipe.mm_projector_type,
              mm_hidden_size=tower_cfg.hidden_size, mm_vision_select_layer=recipe.mm_vision_select_layer,
              mm_vision_select_feature="patch", mm_use_im_start_end=False, mm_use_im_patch_token=False,
              image_aspect_ratio="pad", tokenizer_padding_side="right", use_mm_proj=True)
    for k, v in mm.items():
        setattr(cfg, k, v)
    return cfg


def lora_target_regex(model: Any) -> str:
    """A PEFT target regex naming every ``nn.Linear`` of the text model (not lm_head, connector, encoder)."""
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    keep = [n for n in names if n != "lm_head" and not n.startswith(("model.mm_projector", "model.vision_tower"))]
    if not keep:
        raise InputError("no nn.Linear found in the text model for LoRA")
    leaves = sorted({n.rsplit(".", 1)[-1] for n in keep})
    pattern = rf"^model\.(?!mm_projector\.|vision_tower\.).*\.({'|'.join(map(re.escape, leaves))})$"
    chosen = [n for n in names if re.fullmatch(pattern, n)]
    if sorted(chosen) != sorted(keep):  # pragma: no cover - a leaf name shared with a top-level module
        pattern = "^(" + "|".join(map(re.escape, keep)) + ")$"
    return pattern


def build_model(recipe: Recipe, stage: str) -> Built:
    """Base model + encoder + tokenizer (``checkpoint.assemble``, as inference), with only the stage's parameters
    trainable."""
    quiet_transformers()
    # the recipe seed also fixes what is randomly initialised here (LoRA A, a fresh connector): otherwise runs
    # differ and each DDP rank starts from its own LoRA weights (the Trainer only seeds after the model is built)
    set_seed(recipe.seed)
    folder = checkpoint_folder(recipe.model_name_or_path, what="model")
    config = _libra_config(folder, recipe)
    config.use_cache = False
    dtype = DTYPES[recipe.dtype]
    attn = recipe.attn_implementation
    if attn == "auto":
        attn = resolve_attention("auto", "cuda" if torch.cuda.is_available() else "cpu", dtype)
    check_training_memory(recipe, stage, folder, config)
    adapter = recipe.pretrain_mm_mlp_adapter
    parts = assemble(folder, config, dtype=dtype, attn=attn, vision_tower=recipe.vision_tower,
                     projector=layout.projector_source(adapter) if adapter else None,
                     tokenizer_kwargs={"model_max_length": recipe.model_max_length, "padding_side": recipe.padding_side})
    lm, tower, tokenizer = parts.lm, parts.tower, parts.tokenizer

    lm.requires_grad_(False)
    model = lm
    if stage == "align":
        lm.connector.requires_grad_(True)
        config.tune_mm_mlp_adapter = True
    else:
        if not recipe.lora_enable:  # full fine-tune of the text model
            lm.requires_grad_(True)
            lm.model.vision_tower.requires_grad_(False)
            lm.connector.requires_grad_(False)
        if not recipe.freeze_mm_mlp_adapter:
            lm.connector.requires_grad_(True)
        config.freeze_mm_mlp_adapter = recipe.freeze_mm_mlp_adapter
        config.mm_projector_lr = recipe.mm_projector_lr
        if recipe.lora_enable:
            lcfg = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                              bias=recipe.lora_bias, target_modules=lora_target_regex(lm), task_type="CAUSAL_LM")
            model = get_peft_model(lm, lcfg)
            model.peft_config["default"].base_model_name_or_path = recipe.model_name_or_path
            if not recipe.freeze_mm_mlp_adapter:  # PEFT froze everything but the adapters
                lm.connector.requires_grad_(True)
    if recipe.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in lm.parameters())
    return Built(model, lm, tokenizer, tower.processor, config, folder,
                 {"trainable": trainable, "total": total, "num_image_tokens": int(tower.num_patches)})


def check_training_memory(recipe: Recipe, stage: str, folder: str, config: Any) -> None:
    """Stop before loading when one training step cannot fit (checkpoint/memory.py), naming what to change."""
    from libra_cli.checkpoint import memory

    lora = stage == "finetune" and recipe.lora_enable
    seq = min(recipe.model_max_length, 1024)  # report-length answers; the image tokens are added inside
    est = memory.training_estimate(folder, config, recipe.dtype, stage, lora, recipe.lora_r,
                                   recipe.per_device_train_batch_size, seq, recipe.gradient_checkpointing,
                                   mixed=recipe.bf16 or recipe.fp16)
    memory.check_training(est, lora or stage == "align", recipe.gradient_checkpointing,
                          recipe.per_device_train_batch_size, recipe.dtype)


def saved_config(config: PretrainedConfig, folder: str) -> dict[str, Any]:
    """config.json for an output folder: a relative local tower path becomes absolute (outputs move)."""
    d = config.to_dict()
    tower = d.get("mm_vision_tower")
    if isinstance(tower, str) and tower.startswith("."):
        try:
            d["mm_vision_tower"] = resolve_vision_tower_path(tower, folder)
        except Exception:  # noqa: BLE001 - leave it as given
            pass
    d["use_cache"] = False
    return d
