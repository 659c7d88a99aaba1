"""Loading a Libra checkpoint ready to generate: hub id or folder; full, LoRA (+ base) or projector (+ base).

Weights are loaded once: transformers initialises on the meta device and fills from the files;
LoRA and projector tensors are applied on top and merged in place. :func:`assemble` puts the pieces
together (LM, adapters, encoder, tokenizer) for inference and for training alike, and validation
wraps the model being trained with :meth:`LoadedModel.from_model`, so every path tokenises and
decodes with the same codec.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from libra_cli.checkpoint import layout, memory, registry, runtime
from libra_cli.checkpoint.hub import checkpoint_folder, commit_of
from libra_cli.checkpoint.tokenizer import SpmCodec, load_tokenizer
from libra_cli.checkpoint.tower import load_vision_tower
from libra_cli.console import quiet_transformers
from libra_cli.errors import InputError, ModelLoadError
from libra_cli.images import ImageProcessorConfig, to_pixels
from libra_cli.model import modeling
from libra_cli.model.connectors import build_connector, uses_prior
from libra_cli.model.encoders import VisionTower
from libra_cli.requests import ModelSpec, Sample

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


EncoderOutputs = tuple[torch.Tensor, "torch.Tensor | None"]  # one sample's encoder outputs: current, prior


@dataclass
class LoadedModel:
    """A Libra LM loaded in this process (transformers), with everything needed to build its inputs.

    The ``Model`` of :mod:`libra_cli.requests` for the in-process engines (``hf``, ``ccd``).
    ``compile``, ``compile_backend`` and ``shared_prefix`` say how the transformers engine runs the
    decode loop (speed only: the tokens are the same).
    """

    model: PreTrainedModel  # a Libra causal LM (libra_cli.model.modeling: LibraMixin + the backbone's class)
    tokenizer: PreTrainedTokenizerBase
    image_processor: ImageProcessorConfig
    conv_mode: str
    name: str
    folder: str
    kind: str
    device: str
    dtype: torch.dtype
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    codec: SpmCodec | None = None
    # the decode loop (ModelSpec's settings): a static KV cache and a torch.compile'd step for greedy/sampling
    # (--compile, with that backend); beam search sharing the prompt's KV cache across the beams
    compile: bool = ModelSpec.compile
    compile_backend: str = ModelSpec.compile_backend
    shared_prefix: bool = ModelSpec.shared_prefix

    @classmethod
    def from_model(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tokenizer_folder: str | Path,
                   conv_mode: str, *, image_processor: ImageProcessorConfig | None = None, name: str = "",
                   folder: str = "", kind: str = "full", dtype: torch.dtype | None = None, load_seconds: float = 0.0,
                   info: dict[str, Any] | None = None, **options: Any) -> LoadedModel:
        """Wrap a model in memory (e.g. during training); the original-exact codec is always built.

        ``options``: ``compile``, ``compile_backend``, ``shared_prefix``.
        """
        emb = model.get_input_embeddings().weight
        proc = image_processor or model.vision_tower.processor
        return cls(model=model, tokenizer=tokenizer, image_processor=proc, conv_mode=conv_mode, name=name or str(folder),
                   folder=str(folder), kind=kind, device=str(emb.device), dtype=dtype or _compute_dtype(model),
                   load_seconds=load_seconds, info=dict(info or {}),
                   codec=SpmCodec.for_folder(str(tokenizer_folder), tokenizer), **options)

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
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def num_image_tokens(self) -> int:
        return int(self.model.vision_tower.num_patches)

    @property
    def pad_images(self) -> bool:
        return getattr(self.config, "image_aspect_ratio", "pad") == "pad"

    @property
    def uses_prior(self) -> bool:
        return uses_prior(self.config)

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    @property
    def input_device(self) -> torch.device:
        """Where inputs go: the token embeddings' device (the first GPU under ``device_map``)."""
        return self.model.get_input_embeddings().weight.device

    # -- images: what the in-process engines feed the LM
    def pixels(self, image: Any) -> np.ndarray:
        """One image as the encoder takes it: float32 ``[3, H, W]``."""
        return to_pixels(image, self.image_processor, pad=self.pad_images)

    def pixel_batch(self, samples: list[Sample]) -> torch.Tensor:
        """``[B, 2, 3, H, W]`` (current, prior; the current again for a dummy prior)."""
        pix = []
        for s in samples:
            cur = self.pixels(s.current)
            pix.append(np.stack([cur, cur if s.dummy_prior else self.pixels(s.prior)]))
        return torch.from_numpy(np.stack(pix))

    def encode_images(self, pixels: list[Any]) -> torch.Tensor:
        """The encoder's output for preprocessed images (``[3, H, W]`` each): ``[N, L, P, D]`` on the model's device.

        Callers that see one image in many samples (``libra batch``) encode it once and pass the
        result as ``encoder_outputs``.
        """
        pix = torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in pixels]))
        with torch.inference_mode():
            return self.model.encode_images(pix.to(self.input_device, self.dtype))

    def image_features(self, samples: list[Sample], encoder_outputs: list[EncoderOutputs] | None = None,
                       image_features: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """LLM-space image features ``[B, P, H]`` of the samples: given, or from per-sample encoder outputs
        (current, prior or None = dummy prior), or from their pixels (``pixel_values``: :meth:`pixel_batch`'s)."""
        if image_features is not None:
            return image_features
        with torch.inference_mode():
            if encoder_outputs is None:
                pix = pixel_values if pixel_values is not None else self.pixel_batch(samples)
                return self.model.get_image_features(pix.to(self.input_device, self.dtype))
            if len(encoder_outputs) != len(samples):
                raise InputError(f"{len(encoder_outputs)} encoder outputs for {len(samples)} samples")
            cur = torch.stack([c for c, _ in encoder_outputs])
            prior = torch.stack([c if p is None else p for c, p in encoder_outputs]) if self.uses_prior else None
            return self.model.connect(cur, prior)


def _compute_dtype(model: PreTrainedModel) -> torch.dtype:
    """The dtype inputs are cast to: the connector's (it is never quantised)."""
    return next(model.connector.parameters()).dtype


def read_config(folder: str | Path) -> PretrainedConfig:
    """A Libra (or plain backbone) config from ``folder/config.json``; never runs remote code."""
    from transformers import AutoConfig

    if not (Path(folder) / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json; is this a Libra checkpoint folder?")
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise ModelLoadError(f"{folder} needs custom code from the checkpoint (trust_remote_code); libra never "
                                 "runs code from checkpoints: use a Libra-format checkpoint") from exc
        raise ModelLoadError(f"cannot read {folder}/config.json: {exc}") from exc


def build_lm(weights_folder: str | Path, config: PretrainedConfig, dtype: torch.dtype, attn: str,
             **load_kwargs: Any) -> PreTrainedModel:
    """The Libra causal LM for ``config`` with the weights of ``weights_folder`` (either connector key layout)."""
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


@dataclass
class Parts:
    """What :func:`assemble` puts together: the LM with its encoder attached, and the tokenizer."""

    lm: PreTrainedModel
    tower: VisionTower
    tokenizer: PreTrainedTokenizerBase
    tokenizer_folder: str  # where the original-exact codec's SentencePiece model is


def assemble(folder: str, config: PretrainedConfig, *, dtype: torch.dtype, attn: str, base_folder: str | None = None,
             vision_tower: str | None = None, lora: bool = False, projector: str | Path | None = None,
             device: str | None = None, load_kwargs: dict[str, Any] | None = None,
             tokenizer_kwargs: dict[str, Any] | None = None, progress: bool = True) -> Parts:
    """The one assembler of a Libra model from files (inference and training both call it).

    The LM gets the weights of ``base_folder or folder``; then the folder's LoRA adapter is merged
    (``lora``), or a connector file is loaded on top (``projector``); the LM goes to ``device``
    (unless ``load_kwargs`` map it); the encoder the config names is loaded beside the LM's
    embeddings (with its trained weights when the checkpoint carries them); the tokenizer is the
    folder's, else the base's.
    """
    weights_folder = base_folder or folder
    lm = build_lm(weights_folder, config, dtype, attn, **(load_kwargs or {}))
    if lora:
        apply_lora(lm, folder)
    if projector is not None:
        load_projector(lm, layout.load_bin(projector))
    if device is not None and "device_map" not in (load_kwargs or {}):
        lm.to(device)
    emb_dev = lm.get_input_embeddings().weight.device
    tower = load_vision_tower(config, checkpoint_dir=folder, override=vision_tower, dtype=dtype, device=emb_dev,
                              progress=progress)
    if getattr(config, "unfreeze_mm_vision_tower", False):
        trained = layout.tower_tensors(weights_folder)
        if trained:
            tower.vision_tower.load_state_dict(trained)
    lm.set_vision_tower(tower)
    tok_folder = folder if layout.has_tokenizer(folder) else (base_folder or folder)
    tokenizer = load_tokenizer(tok_folder, **(tokenizer_kwargs or {}))
    if base_folder and not layout.has_spm_model(tok_folder) and layout.has_spm_model(base_folder):
        tok_folder = base_folder  # an output that lost tokenizer.model: decode with its base's, like the original
    return Parts(lm, tower, tokenizer, tok_folder)


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
    *,
    compile_backend: str = "inductor",
    shared_prefix: bool = True,
    quiet: bool = False,
    workload: memory.Workload | None = None,
) -> LoadedModel:
    """Load a Libra checkpoint (hub id or folder; ``revision``: branch, tag or commit) ready for generation.

    ``model_base`` is required for LoRA folders and projector-only folders (as in the original).
    ``compile``: static KV cache + compiled decode step (``compile_backend``: torch.compile's);
    ``shared_prefix``: beams share the prompt's KV cache; ``jpeg_draft``: reduced-size JPEG decoding
    (inexact); ``quiet``: no download progress bars. ``workload``: what will run on it (batch, beams, tokens),
    for the memory pre-flight check (checkpoint/memory.py).
    """
    quiet_transformers()
    t0 = time.perf_counter()
    dev = runtime.resolve_device(device)
    folder = checkpoint_folder(model, revision=revision, what="model", progress=not quiet)
    kind = layout.folder_kind(folder)
    config = read_config(folder)
    if config.model_type not in modeling.BACKBONES:
        raise ModelLoadError(
            f"{model}: model_type {config.model_type!r} is not a Libra model "
            f"(expected one of {', '.join(modeling.BACKBONES)})"
        )
    if kind != "full" and not model_base:
        raise InputError(f"{model} is a {kind} folder; pass --model-base with the base model it was trained on")
    base_folder = checkpoint_folder(model_base, what="base model", progress=not quiet) \
        if (kind != "full" and model_base) else None
    weights_folder = base_folder or folder
    quant = "4bit" if load_4bit else "int8" if load_8bit else None
    dtype_chosen, estimate = memory.preflight(weights_folder, config, dtype, dev, workload, quant, vision_tower, str(model))
    torch_dtype = runtime.DTYPES[dtype_chosen]
    attn_impl = runtime.resolve_attention(attn, dev, torch_dtype)
    extra: dict[str, Any] = {}
    if load_4bit or load_8bit:
        extra["quantization_config"] = runtime.bnb_config(load_4bit, torch_dtype)
        extra["device_map"] = {"": dev if dev != "cuda" else 0}
    elif runtime.needs_device_map(dev, runtime.weight_bytes(base_folder or folder, config, torch_dtype)):
        extra["device_map"] = "auto"
    parts = assemble(folder, config, dtype=torch_dtype, attn=attn_impl, base_folder=base_folder,
                     vision_tower=vision_tower, lora=kind == "lora",
                     projector=layout.projector_file(folder) if kind == "projector" else None, device=dev,
                     load_kwargs=extra, progress=not quiet)
    lm = parts.lm
    lm.eval()
    lm.generation_config.use_cache = True  # published configs say use_cache: false (saved from training)
    lm.config.use_cache = True
    conv = registry.conv_mode_for(model, config, conv_mode)
    return LoadedModel.from_model(
        lm, parts.tokenizer, parts.tokenizer_folder, conv,
        image_processor=dataclasses.replace(parts.tower.processor, jpeg_draft=jpeg_draft), name=str(model),
        folder=folder, kind=kind, dtype=torch_dtype, load_seconds=time.perf_counter() - t0,
        info={"attn_implementation": attn_impl, "model_base": model_base, "vision_tower": parts.tower.name,
              "revision": revision, "commit": commit_of(folder), "memory": estimate.to_dict()},
        compile=compile, compile_backend=compile_backend, shared_prefix=shared_prefix)


def load_projector(lm: PreTrainedModel, state: dict[str, torch.Tensor]) -> None:
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


def apply_lora(lm: PreTrainedModel, folder: str | Path) -> None:
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
