"""Loading a Libra checkpoint ready to generate: hub id or folder; full, LoRA (+ base) or projector (+ base).

Weights are loaded once: transformers initialises on the meta device and fills from the files;
LoRA and projector tensors are applied on top and merged in place. Training builds its model with
the same :func:`build_lm`, and validation wraps it with :meth:`LoadedModel.from_model`, so every
path tokenises and decodes with the same codec.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from libra_cli.checkpoint import layout, memory, runtime
from libra_cli.checkpoint.hub import checkpoint_folder, commit_of
from libra_cli.checkpoint.tokenizer import SpmCodec, load_tokenizer
from libra_cli.checkpoint.tower import load_vision_tower
from libra_cli.console import quiet_transformers, warn_once
from libra_cli.errors import InputError, ModelLoadError
from libra_cli.images import ImageProcessorConfig


@dataclass
class LoadedModel:
    """A ready-to-generate model with everything needed to build its inputs."""

    model: Any
    tokenizer: Any
    image_processor: ImageProcessorConfig
    conv_mode: str
    name: str
    folder: str
    kind: str
    device: str
    dtype: torch.dtype
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    codec: Any = None
    # greedy/sampling decode with a static KV cache and a torch.compile'd step (``--compile``); speed only
    compile: bool = False

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, tokenizer_folder: str | Path, conv_mode: str, *,
                   image_processor: ImageProcessorConfig | None = None, name: str = "", folder: str = "",
                   kind: str = "full", dtype: torch.dtype | None = None, load_seconds: float = 0.0,
                   info: dict[str, Any] | None = None) -> LoadedModel:
        """Wrap a model in memory (e.g. during training); the original-exact codec is always built."""
        emb = model.get_input_embeddings().weight
        proc = image_processor or model.vision_tower.processor
        return cls(model=model, tokenizer=tokenizer, image_processor=proc, conv_mode=conv_mode, name=name or str(folder),
                   folder=str(folder), kind=kind, device=str(emb.device), dtype=dtype or _compute_dtype(model),
                   load_seconds=load_seconds, info=dict(info or {}),
                   codec=SpmCodec.for_folder(str(tokenizer_folder), tokenizer))

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, skipping special tokens, as the original (slow, SentencePiece) tokenizer did."""
        if self.codec is not None:
            return self.codec.decode(ids)
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Text -> ids (with BOS), as the original (slow) tokenizer."""
        if self.codec is not None:
            return self.codec.encode(text)
        return list(self.tokenizer(text).input_ids)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_image_tokens(self) -> int:
        return int(self.model.vision_tower.num_patches)

    @property
    def pad_images(self) -> bool:
        return getattr(self.config, "image_aspect_ratio", "pad") == "pad"

    @property
    def uses_prior(self) -> bool:
        return bool(getattr(self.model.connector, "uses_prior", False))


def _compute_dtype(model: Any) -> torch.dtype:
    """The dtype inputs are cast to: the connector's (it is never quantised)."""
    return next(model.connector.parameters()).dtype


def read_config(folder: str | Path) -> Any:
    """A Libra (or plain backbone) config from ``folder/config.json``; never runs remote code."""
    from transformers import AutoConfig

    from libra_cli.model import modeling  # noqa: F401 - registers the Libra configs with AutoConfig

    if not (Path(folder) / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json; is this a Libra checkpoint folder?")
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise ModelLoadError(f"{folder} needs custom code from the checkpoint (trust_remote_code); libra never "
                                 "runs code from checkpoints: use a Libra-format checkpoint") from exc
        raise ModelLoadError(f"cannot read {folder}/config.json: {exc}") from exc


def build_lm(weights_folder: str | Path, config: Any, dtype: torch.dtype, attn: str, **load_kwargs: Any) -> Any:
    """The Libra causal LM for ``config`` with the weights of ``weights_folder`` (either connector key layout)."""
    from libra_cli.model import modeling

    if config.model_type not in modeling.BACKBONES:
        raise ModelLoadError(
            f"{weights_folder}: model_type {config.model_type!r} is not a Libra model "
            f"(expected one of {', '.join(modeling.BACKBONES)})"
        )
    kw: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn, **load_kwargs}
    mapping = layout.llava_key_mapping(layout.checkpoint_keys(weights_folder))
    if mapping:
        kw["key_mapping"] = mapping
    model_cls = modeling.BACKBONES[config.model_type][1]
    try:
        return model_cls.from_pretrained(str(weights_folder), config=config, **kw)
    except layout.corrupt_errors() as exc:
        raise layout.damaged(weights_folder, exc) from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load weights from {weights_folder}: {exc}") from exc


def load_model(
    model: str,
    model_base: str | None = None,
    vision_tower: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    attn: str = "auto",
    conv_mode: str | None = None,
    load_4bit: bool = False,
    load_8bit: bool = False,
    revision: str | None = None,
    compile: bool = False, jpeg_draft: bool = False,  # noqa: A002 - the flag's name
    workload: memory.Workload | None = None,
) -> LoadedModel:
    """Load a Libra checkpoint (hub id or folder; ``revision``: branch, tag or commit) ready for generation.

    ``model_base`` is required for LoRA folders and projector-only folders (as in the original).
    ``compile``: static KV cache + compiled decode step; ``jpeg_draft``: reduced-size JPEG decoding (inexact).
    ``workload``: what will run on it (batch, beams, tokens), for the memory pre-flight check (checkpoint/memory.py).
    """
    quiet_transformers()
    t0 = time.perf_counter()
    dev = runtime.resolve_device(device)
    folder = checkpoint_folder(model, revision=revision, what="model")
    kind = layout.folder_kind(folder)
    config = read_config(folder)
    from libra_cli.model import modeling

    if config.model_type not in modeling.BACKBONES:
        raise ModelLoadError(
            f"{model}: model_type {config.model_type!r} is not a Libra model "
            f"(expected one of {', '.join(modeling.BACKBONES)})"
        )
    if kind != "full" and not model_base:
        raise InputError(f"{model} is a {kind} folder; pass --model-base with the base model it was trained on")
    base_folder = checkpoint_folder(model_base, what="base model") if (kind != "full" and model_base) else None
    weights_folder = base_folder or folder
    quant = "4bit" if load_4bit else "int8" if load_8bit else None
    dtype_chosen, estimate = memory.preflight(weights_folder, config, dtype, dev, workload, quant, vision_tower, str(model))
    torch_dtype = runtime.DTYPES[dtype_chosen]
    attn_impl = runtime.resolve_attention(attn, dev, torch_dtype)
    extra: dict[str, Any] = {}
    if load_4bit or load_8bit:
        extra["quantization_config"] = runtime.bnb_config(load_4bit, torch_dtype)
        extra["device_map"] = {"": dev if dev != "cuda" else 0}
    elif runtime.needs_device_map(dev, runtime.weight_bytes(weights_folder, config, torch_dtype)):
        extra["device_map"] = "auto"
    lm = build_lm(weights_folder, config, torch_dtype, attn_impl, **extra)
    if kind == "lora":
        apply_lora(lm, folder)
    elif kind == "projector":
        load_projector(lm, layout.load_bin(layout.projector_file(folder)))
    if "device_map" not in extra:
        lm.to(dev)
    lm.eval()
    lm.generation_config.use_cache = True  # published configs say use_cache: false (saved from training)
    lm.config.use_cache = True
    emb_dev = lm.get_input_embeddings().weight.device
    tower = load_vision_tower(config, checkpoint_dir=folder, override=vision_tower, dtype=torch_dtype, device=emb_dev)
    if getattr(config, "unfreeze_mm_vision_tower", False):
        trained = layout.tower_tensors(weights_folder)
        if trained:
            tower.vision_tower.load_state_dict(trained)
    lm.set_vision_tower(tower)

    tokenizer, tok_folder = _tokenizer(folder, base_folder)
    conv = _template(model, config, conv_mode)
    loaded = LoadedModel.from_model(
        lm, tokenizer, tok_folder, conv, image_processor=tower.processor, name=str(model), folder=folder, kind=kind,
        dtype=torch_dtype, load_seconds=time.perf_counter() - t0,
        info={"attn_implementation": attn_impl, "model_base": model_base, "vision_tower": tower.name,
              "revision": revision, "commit": commit_of(folder), "memory": estimate.to_dict()})
    loaded.compile, loaded.image_processor.jpeg_draft = compile, jpeg_draft
    return loaded


def _tokenizer(folder: str, base_folder: str | None) -> tuple[Any, str]:
    """The folder's tokenizer (else its base's), and where the codec's SentencePiece model comes from."""
    tok_folder = folder if layout.has_tokenizer(folder) else (base_folder or folder)
    tokenizer = load_tokenizer(tok_folder)
    if base_folder and not layout.has_spm_model(tok_folder) and layout.has_spm_model(base_folder):
        tok_folder = base_folder  # an output that lost tokenizer.model: decode with its base's, like the original
    return tokenizer, tok_folder


def _template(model: str, config: Any, conv_mode: str | None) -> str:
    """The prompt template: the one the model was trained with, or the user's (warned about when it differs)."""
    from libra_cli import prompts
    from libra_cli.checkpoint import registry

    chosen = registry.default_conv_mode(model, config)
    if conv_mode and conv_mode != chosen:
        prompts.get_template(conv_mode)  # validates the name
        warn_once(f"conv:{model}:{conv_mode}",
                  f"--conv-mode {conv_mode} differs from {chosen!r}, the template {model} was trained with")
    conv = conv_mode or chosen
    prompts.get_template(conv)
    return conv


def load_projector(lm: Any, state: dict[str, torch.Tensor]) -> None:
    """Load connector weights (``model.mm_projector.*``, either key layout) into ``lm``."""
    sub = layout.connector_state(state)
    if not sub:
        raise ModelLoadError("the projector file holds no connector (model.mm_projector.*) tensors")
    missing, unexpected = lm.model.mm_projector.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"projector weights do not fit this connector ({getattr(lm.config, 'mm_projector_type', '?')}): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def check_projector_fits(state: dict[str, torch.Tensor], config_dir: Path) -> str:
    """Load ``state`` strictly into a fresh connector built from the config: what a stage-2 start does."""
    from libra_cli.model.connectors import build_connector

    config = read_config(config_dir)
    with torch.device("meta"):
        conn = build_connector(config)
    missing, unexpected = conn.load_state_dict(layout.connector_state(state), strict=False, assign=True)
    if missing or unexpected:
        raise InputError(
            f"the connector weights do not fit {config_dir}/config.json ({getattr(config, 'mm_projector_type', '?')}): "
            f"missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}"
        )
    return str(getattr(config, "mm_projector_type", "?"))


def apply_lora(lm: Any, folder: str | Path) -> None:
    """non_lora_trainables + PEFT adapter, merged into the base weights (the original's LoRA path)."""
    from peft import PeftModel

    nlt_path = layout.non_lora_file(folder)
    if nlt_path.is_file():
        state = layout.normalize_connector_keys(layout.strip_trainables_prefix(layout.load_bin(nlt_path)))
        own = lm.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise ModelLoadError(f"{nlt_path.name} does not fit the base model (shape mismatch at {bad[0]})")
        lm.load_state_dict(state, strict=False)
    try:
        peft_model = PeftModel.from_pretrained(lm, str(folder))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the LoRA adapter in {folder}: {exc}") from exc
    merged = peft_model.merge_and_unload()
    if merged is not lm:  # merge_and_unload returns the base model, merged in place
        lm.__dict__.update(merged.__dict__)
