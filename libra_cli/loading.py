"""Loading checkpoints: hub id or folder; full, LoRA (+ base) and projector-only (+ base) layouts.

Weights are loaded once: transformers initialises on the meta device and fills from the files;
LoRA and projector tensors are loaded on top and merged in place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from libra_cli.errors import InputError, ModelLoadError
from libra_cli.images import ImageProcessorConfig

log = logging.getLogger("libra")

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Print a warning once per process (e.g. a template mismatch)."""
    if key in _warned:
        return
    _warned.add(key)
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def quiet_transformers() -> None:
    """Keep third-party chatter (progress bars, deprecation notes) out of the CLI unless --debug."""
    if os.environ.get("LIBRA_DEBUG") == "1":
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def hub_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None, what: str = "model") -> str:
    """A local folder for ``name_or_path``: the folder itself, or a hub snapshot (cache first).

    Offline (``HF_HUB_OFFLINE=1``) only the local cache is used; a missing repo is a one-line error.
    """
    p = Path(str(name_or_path)).expanduser()
    if p.is_dir():
        return str(p.resolve())
    name = str(name_or_path)
    if p.exists():
        raise ModelLoadError(f"{what} path {name} is a file; give the checkpoint folder")
    if name.startswith((".", "/", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise ModelLoadError(f"{what} {name!r} is neither a folder nor a hub id (owner/name); check the path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return snapshot_download(name, allow_patterns=allow_patterns)
    except LocalEntryNotFoundError as exc:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ModelLoadError(
                f"{what} {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it first (huggingface-cli download {name}) or pass a local folder"
            ) from exc
        raise ModelLoadError(f"cannot download {what} {name!r} (no network?); pass a local folder") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"{what} {name!r} does not exist on the Hugging Face hub (or is private: log in)") from exc
    except Exception as exc:  # noqa: BLE001 - network stack errors vary
        raise ModelLoadError(f"cannot fetch {what} {name!r}: {exc}") from exc


def folder_kind(folder: str | Path) -> str:
    """``full``, ``lora`` or ``projector`` (what the folder holds)."""
    f = Path(folder)
    if (f / "adapter_config.json").is_file():
        return "lora"
    if any((f / w).is_file() for w in WEIGHT_FILES):
        return "full"
    if (f / "mm_projector.bin").is_file() or (f / "mm_tac_projector.bin").is_file():
        return "projector"
    raise ModelLoadError(
        f"{folder} holds no model weights (expected one of {', '.join(WEIGHT_FILES)}, adapter_config.json "
        "or mm_projector.bin)"
    )


def checkpoint_keys(folder: str | Path) -> list[str]:
    """Tensor names of a full checkpoint, read from headers/index only (no tensor is loaded)."""
    f = Path(folder)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (f / index).is_file():
            return list(json.loads((f / index).read_text())["weight_map"])
    if (f / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(f / "model.safetensors"), "pt") as sf:
            return list(sf.keys())
    if (f / "pytorch_model.bin").is_file():
        # mmap: only the pickle's key list is read, not gigabytes of tensors that from_pretrained reads again
        return list(torch.load(f / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True))
    return []


def read_tensors(folder: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with ``prefix`` from a (possibly sharded) full checkpoint."""
    f = Path(folder)
    out: dict[str, torch.Tensor] = {}
    files = sorted(f.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(str(file), "pt") as sf:
                for k in sf.keys():
                    if k.startswith(prefix):
                        out[k] = sf.get_tensor(k)
        return out
    for file in sorted(f.glob("pytorch_model*.bin")):
        sd = torch.load(file, map_location="cpu", weights_only=True)
        out.update({k: v for k, v in sd.items() if k.startswith(prefix)})
    return out


def load_bin(path: str | Path) -> dict[str, torch.Tensor]:
    """A torch state dict file (``mm_projector.bin``, ``non_lora_trainables.bin``), tensors only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"missing file {path}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps requested but MPS is not available; use --device cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise InputError(f"unknown --device {device!r}; use auto, cuda, cuda:N, mps or cpu")
    return device


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str, device: str, config: Any = None) -> torch.dtype:
    """``auto``: the checkpoint's dtype on GPU (bfloat16 if unknown), float32 on CPU."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise InputError(f"unknown --dtype {dtype!r}; use auto, bfloat16, float16 or float32")
        return _DTYPES[dtype]
    if device == "cpu":
        return torch.float32
    if device == "mps":
        return torch.float16
    saved = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    saved = str(saved).replace("torch.", "") if saved else ""
    if saved in ("float16", "bfloat16"):
        return _DTYPES[saved]
    return torch.bfloat16


def resolve_attention(attn: str, device: str, dtype: torch.dtype) -> str:
    """``sdpa`` by default; ``flash_attention_2`` when flash-attn is installed and usable."""
    if attn != "auto":
        return attn
    if device.startswith("cuda") and dtype in (torch.float16, torch.bfloat16):
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def checkpoint_bytes(folder: str | Path) -> int:
    """Size on disk of a full checkpoint's weight files (safetensors, else pytorch_model*.bin)."""
    files = list(Path(folder).glob("*.safetensors")) or list(Path(folder).glob("pytorch_model*.bin"))
    return sum(f.stat().st_size for f in files)


def weight_bytes(folder: str | Path, config: Any, dtype: torch.dtype) -> int:
    """Bytes the LLM weights take in ``dtype``, from the checkpoint files' sizes (nothing is read)."""
    stored = checkpoint_bytes(folder)
    saved = str(getattr(config, "torch_dtype", None) or getattr(config, "dtype", None) or "float32")
    stored_size = 2 if ("16" in saved) else 4
    return int(stored * torch.empty((), dtype=dtype).element_size() / stored_size)


def needs_device_map(device: str, nbytes: int) -> bool:
    """Spread over all GPUs (``device_map="auto"``) only when the model does not fit on the first one."""
    if device != "cuda" or torch.cuda.device_count() < 2 or os.environ.get("LIBRA_NO_DEVICE_MAP") == "1":
        return False
    free, _ = torch.cuda.mem_get_info(0)
    return nbytes * 1.15 > free  # headroom for activations, KV cache and the encoder


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
) -> LoadedModel:
    """Load a Libra checkpoint (hub id or folder) ready for generation.

    ``model_base`` is required for LoRA folders and projector-only folders (as in the original).
    """
    from transformers import AutoConfig, AutoTokenizer

    from libra_cli import prompts, registry
    from libra_cli.model import modeling
    from libra_cli.model.connectors import normalize_connector_keys
    from libra_cli.model.encoders import load_vision_tower

    quiet_transformers()
    t0 = time.perf_counter()
    dev = resolve_device(device)
    folder = hub_folder(model, what="model")
    kind = folder_kind(folder)
    if not (Path(folder) / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json; is this a Libra checkpoint folder?")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot read {folder}/config.json: {exc}") from exc
    if config.model_type not in modeling.BACKBONES:
        raise ModelLoadError(
            f"{model}: model_type {config.model_type!r} is not a Libra model "
            f"(expected one of {', '.join(modeling.BACKBONES)})"
        )
    if kind != "full" and not model_base:
        raise InputError(f"{model} is a {kind} folder; pass --model-base with the base model it was trained on")
    base_folder = hub_folder(model_base, what="base model") if (kind != "full" and model_base) else None
    torch_dtype = resolve_dtype(dtype, dev, config)
    attn_impl = resolve_attention(attn, dev, torch_dtype)
    model_cls = modeling.BACKBONES[config.model_type][1]

    load_kwargs: dict[str, Any] = {"dtype": torch_dtype, "attn_implementation": attn_impl}
    weights_folder = base_folder if base_folder else folder
    if load_4bit or load_8bit:
        load_kwargs["quantization_config"] = _bnb_config(load_4bit, torch_dtype)
        load_kwargs["device_map"] = {"": dev if dev != "cuda" else 0}
    elif needs_device_map(dev, weight_bytes(weights_folder, config, torch_dtype)):
        load_kwargs["device_map"] = "auto"
    keys = checkpoint_keys(weights_folder)
    if any(re.match(r"model\.mm_projector\.\d+\.", k) for k in keys):
        load_kwargs["key_mapping"] = {r"^model\.mm_projector\.(\d+)\.": r"model.mm_projector.projector.\1."}
    try:
        lm = model_cls.from_pretrained(weights_folder, config=config, **load_kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load weights from {weights_folder}: {exc}") from exc

    if kind == "lora":
        _apply_lora(lm, folder, normalize_connector_keys)
    elif kind == "projector":
        proj_file = Path(folder) / "mm_projector.bin"
        if not proj_file.is_file():
            proj_file = Path(folder) / "mm_tac_projector.bin"
        load_projector(lm, load_bin(proj_file))

    if "device_map" not in load_kwargs:
        lm.to(dev)
    lm.eval()
    lm.generation_config.use_cache = True  # published configs say use_cache: false (saved from training)
    lm.config.use_cache = True
    emb_dev = lm.get_input_embeddings().weight.device
    tower = load_vision_tower(config, checkpoint_dir=folder, override=vision_tower,
                              dtype=torch_dtype, device=emb_dev)
    if getattr(config, "unfreeze_mm_vision_tower", False):
        tw = read_tensors(weights_folder, "model.vision_tower.vision_tower.")
        if tw:
            tower.vision_tower.load_state_dict({k[len("model.vision_tower.vision_tower."):]: v for k, v in tw.items()})
    lm.set_vision_tower(tower)

    tok_folder = folder if _has_tokenizer(folder) else (base_folder or folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_folder)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer from {tok_folder}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token

    codec = SpmCodec.for_folder(tok_folder, tokenizer)
    chosen = registry.default_conv_mode(model, config)
    if conv_mode and conv_mode != chosen:
        prompts.get_template(conv_mode)  # validates the name
        warn_once(f"conv:{model}:{conv_mode}",
                  f"--conv-mode {conv_mode} differs from {chosen!r}, the template {model} was trained with")
    conv = conv_mode or chosen
    prompts.get_template(conv)
    return LoadedModel(
        model=lm, tokenizer=tokenizer, image_processor=tower.processor, conv_mode=conv, name=str(model),
        folder=folder, kind=kind, device=str(emb_dev), dtype=torch_dtype,
        load_seconds=time.perf_counter() - t0,
        info={"attn_implementation": attn_impl, "model_base": model_base, "vision_tower": tower.name},
        codec=codec,
    )


class SpmCodec:
    """Encode and decode exactly like the original's slow Llama tokenizer (SentencePiece).

    The original loaded tokenizers with ``use_fast=False``. transformers 5's tokenizers differ
    from it on runs of spaces (``"  two"``: the fast one merges them) and on byte-fallback
    decoding (``<0x3E><0xB8>`` -> ``'>\ufffd'`` in SentencePiece, ``'\ufffd\ufffd'`` in the
    ``tokenizers`` ByteFallback decoder). Both change published numbers, so for SentencePiece
    Llama tokenizers this re-implements the slow ``LlamaTokenizer`` (legacy and non-legacy).
    """

    def __init__(self, model_file: str, tokenizer: Any, legacy: bool, add_prefix_space: bool,
                 add_bos: bool = True, add_eos: bool = False) -> None:
        import sentencepiece as spm

        self.tokenizer = tokenizer
        self.legacy = legacy
        self.add_prefix_space = add_prefix_space
        proto = Path(model_file).read_bytes()
        if not legacy:  # the slow tokenizer disables the dummy prefix and adds its own
            from sentencepiece import sentencepiece_model_pb2 as pb

            m = pb.ModelProto()
            m.ParseFromString(proto)
            m.normalizer_spec.add_dummy_prefix = False
            proto = m.SerializeToString()
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self.size = self.sp.get_piece_size()
        self.special = set(tokenizer.all_special_ids)
        self.added = {t.content: i for i, t in tokenizer.added_tokens_decoder.items()}
        self.added_ids = set(self.added.values())
        self.special_tokens = set(tokenizer.all_special_tokens)
        unk = tokenizer.unk_token or "<unk>"
        self.unk = unk
        self.unk_len = len(self.sp.encode(unk, out_type=str))
        self.add_bos = add_bos
        self.add_eos = add_eos
        pattern = "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True))
        self.split_re = re.compile(f"({pattern})") if pattern else None

    @classmethod
    def for_folder(cls, folder: str, tokenizer: Any) -> SpmCodec | None:
        f = Path(folder) / "tokenizer.model"
        if not f.is_file() or "llama" not in type(tokenizer).__name__.lower():
            return None
        cfg_file = Path(folder) / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        legacy = cfg.get("legacy")
        try:
            return cls(str(f), tokenizer, legacy is not False, bool(cfg.get("add_prefix_space", True)),
                       bool(cfg.get("add_bos_token", True)), bool(cfg.get("add_eos_token", False)))
        except Exception:  # noqa: BLE001 - not a usable SentencePiece model: keep the tokenizer's own codec
            return None

    def _tokenize(self, text: str) -> list[str]:
        if self.legacy or not text.startswith(("\u2581", " ")):
            return self.sp.encode(text, out_type=str)
        tokens = self.sp.encode(self.unk + text, out_type=str)
        return tokens[self.unk_len:] if len(tokens) >= self.unk_len else tokens

    def encode(self, text: str) -> list[int]:
        tokens: list[str] = []
        if text:
            if not self.legacy:
                text = text.replace("\u2581", " ")
                if self.add_prefix_space:
                    text = "\u2581" + text
            parts = self.split_re.split(text) if self.split_re else [text]
            for part in parts:
                if not part:
                    continue
                tokens.extend([part] if part in self.added else self._tokenize(part))
            if not self.legacy and len(tokens) > 1 and tokens[0] == "\u2581" and tokens[1] in self.special_tokens:
                tokens = tokens[1:]
        ids = [self.added[t] if t in self.added else self.sp.piece_to_id(t) for t in tokens]
        if self.add_bos and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        if self.add_eos and self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        out, run = "", []
        for t in ids:
            if t in self.special:
                continue
            if 0 <= t < self.size and t not in self.added_ids:
                run.append(t)
            else:  # added tokens live outside the SentencePiece vocabulary
                out += self.sp.decode(run) + (self.tokenizer.convert_ids_to_tokens(t) or "")
                run = []
        return out + self.sp.decode(run)


def _has_tokenizer(folder: str) -> bool:
    f = Path(folder)
    return any((f / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def _bnb_config(load_4bit: bool, compute_dtype: torch.dtype) -> Any:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError("4/8-bit loading needs bitsandbytes: pip install 'libra-cli[quant]'")
    from transformers import BitsAndBytesConfig

    skip = ["mm_projector", "vision_tower", "lm_head"]
    if load_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=True,
                                  bnb_4bit_quant_type="nf4", llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)


def load_projector(lm: Any, state: dict[str, torch.Tensor]) -> None:
    """Load connector weights (``model.mm_projector.*``, either key layout) into ``lm``."""
    from libra_cli.model.connectors import normalize_connector_keys

    state = normalize_connector_keys(state)
    prefix = "model.mm_projector."
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise ModelLoadError("the projector file holds no model.mm_projector.* tensors")
    missing, unexpected = lm.model.mm_projector.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"projector weights do not fit this connector ({getattr(lm.config, 'mm_projector_type', '?')}): "
            f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def _apply_lora(lm: Any, folder: str, normalize: Any) -> None:
    """non_lora_trainables + PEFT adapter, merged into the base weights (the original's LoRA path)."""
    from peft import PeftModel

    nlt_path = Path(folder) / "non_lora_trainables.bin"
    if nlt_path.is_file():
        state = load_bin(nlt_path)
        state = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in state.items()}
        if any(k.startswith("model.model.") for k in state):
            state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
        state = normalize(state)
        own = lm.state_dict()
        bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise ModelLoadError(f"non_lora_trainables.bin does not fit the base model (shape mismatch at {bad[0]})")
        lm.load_state_dict(state, strict=False)
    try:
        peft_model = PeftModel.from_pretrained(lm, folder)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the LoRA adapter in {folder}: {exc}") from exc
    merged = peft_model.merge_and_unload()
    if merged is not lm:  # merge_and_unload returns the base model, merged in place
        lm.__dict__.update(merged.__dict__)
