"""Runtime policy: which device, dtype and attention kernel a model runs with (memory sizing: memory.py).

One dtype table for the whole package (loading, convert and training read it from here).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from libra_cli.errors import InputError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


def dtype_name(dtype: torch.dtype | str) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).replace("torch.", "")


def parse_dtype(name: str | None) -> str | None:
    """Canonical dtype name (``float32``/``bfloat16``/``float16``), or None for 'auto / keep the source's'."""
    if name in (None, "", "auto", "keep"):
        return None
    n = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if n not in DTYPES:
        raise InputError(f"unknown --dtype {name!r}; use auto, bfloat16, float16 or float32")
    return n


def saved_dtype(config: Any) -> str:
    """The dtype a checkpoint was stored in (config ``torch_dtype``/``dtype``); float32 when unknown."""
    if isinstance(config, dict):
        saved = config.get("torch_dtype") or config.get("dtype")
    else:
        saved = getattr(config, "torch_dtype", None) or getattr(config, "dtype", None)
    name = dtype_name(saved) if saved else "float32"
    return name if name in DTYPES else "float32"


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda, mps or cpu; an explicit device that is not there is a one-line error."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but no CUDA GPU is available; use --device cpu")
    if device == "mps" and not mps:
        raise InputError("--device mps requested but MPS is not available; use --device cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise InputError(f"unknown --device {device!r}; use auto, cuda, cuda:N, mps or cpu")
    return device


def resolve_dtype(dtype: str, device: str, config: Any = None) -> torch.dtype:
    """``auto``: the checkpoint's dtype on GPU (bfloat16 if it was float32), float32 on CPU, float16 on MPS."""
    if dtype != "auto":
        name = parse_dtype(dtype)
        assert name is not None
        return DTYPES[name]
    if device == "cpu":
        return torch.float32
    if device == "mps":
        return torch.float16
    saved = saved_dtype(config) if config is not None else "float32"
    return DTYPES[saved] if saved in ("float16", "bfloat16") else torch.bfloat16


ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
_ATTN_ALIASES = {"flash": "flash_attention_2", "flash2": "flash_attention_2", "fa2": "flash_attention_2"}


def resolve_attention(attn: str, device: str, dtype: torch.dtype) -> str:
    """``sdpa`` by default; ``flash_attention_2`` when flash-attn is installed and usable."""
    attn = _ATTN_ALIASES.get(attn, attn)
    if attn not in ATTENTION:
        raise InputError(f"unknown --attn {attn!r}; use {', '.join(ATTENTION)}")
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if attn == "flash_attention_2":
        if not has_flash:
            raise InputError("--attn flash_attention_2 needs the flash-attn package, which has no wheels: build it "
                             "on a CUDA machine with nvcc (pip install flash-attn --no-build-isolation), or use "
                             "--attn sdpa (the default, nearly as fast)")
        if not device.startswith("cuda"):
            raise InputError("--attn flash_attention_2 runs on CUDA GPUs only; use --attn sdpa on this device")
        return attn
    if attn != "auto":
        return attn
    if device.startswith("cuda") and dtype in (torch.float16, torch.bfloat16) and has_flash:
        return "flash_attention_2"
    return "sdpa"


def checkpoint_bytes(folder: str | Path) -> int:
    """Size on disk of a full checkpoint's weight files (safetensors, else pytorch_model*.bin)."""
    files = list(Path(folder).glob("*.safetensors")) or list(Path(folder).glob("pytorch_model*.bin"))
    return sum(f.stat().st_size for f in files)


def weight_bytes(folder: str | Path, config: Any, dtype: torch.dtype) -> int:
    """Bytes the LLM weights take in ``dtype``, from the checkpoint files' sizes (nothing is read)."""
    stored_size = 2 if "16" in saved_dtype(config) else 4
    return int(checkpoint_bytes(folder) * torch.empty((), dtype=dtype).element_size() / stored_size)


def needs_device_map(device: str, nbytes: int) -> bool:
    """Spread over all GPUs (``device_map="auto"``) only when the model does not fit on the first one."""
    if device != "cuda" or torch.cuda.device_count() < 2:  # cuda:N (e.g. one shard per GPU): that GPU only
        return False
    free, _ = torch.cuda.mem_get_info(0)
    return nbytes * 1.15 > free  # headroom for activations, KV cache and the encoder


def physical_memory() -> int:
    """Bytes of RAM (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0


def bnb_config(load_4bit: bool, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes 4/8-bit config; the connector, encoder and LM head stay in full precision."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError("4/8-bit loading needs bitsandbytes: pip install 'libra-cli[quant]'")
    from transformers import BitsAndBytesConfig

    skip = ["mm_projector", "vision_tower", "lm_head"]
    if load_4bit:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_use_double_quant=True,
                                  bnb_4bit_quant_type="nf4", llm_int8_skip_modules=skip)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
