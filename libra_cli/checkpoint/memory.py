"""Memory sizing: what a request needs (weights, KV cache, activations) against what this machine has.

Before a model loads, libra adds up what the request will hold at its peak and compares it with the
memory that is free (``/proc/meminfo`` MemAvailable and the process's cgroup limit on a CPU,
``cudaMemGetInfo`` on a GPU). When it cannot fit, the run stops in seconds with one line naming the
fix, instead of being killed by the kernel minutes later with no message. Nothing here reads a
tensor: weights are sized from the safetensors headers (or file sizes), the rest from the config.

``--dtype auto`` on a CPU is decided here too (:func:`choose_dtype`): a checkpoint stored in float32
stays float32 when it fits; a 16-bit checkpoint runs in bfloat16 where the CPU has native bf16
(avx512_bf16 / amx_bf16 / ARM bf16), else in float32 when that fits and, on AVX-512 CPUs, bfloat16 when
it does not. Measured on a 2-core EPYC (docs/performance.md): native bf16 matmul 2.7x float32; with
bf16 instructions masked in oneDNN (``ONEDNN_MAX_CPU_ISA=AVX512_CORE``) bf16 runs at 0.47x float32, and
on AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) at 0.01x, so it is never chosen there.

``LIBRA_MEMORY_CHECK=0`` turns the check off (the estimate is still printed by ``libra doctor --model``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_cli.checkpoint.layout import safetensors_header
from libra_cli.errors import InputError
from libra_cli.requests import GenerationSettings

GB = 1e9
ELEM = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1, "4bit": 0.5}
_ST_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}
DEFAULT_IMAGE_TOKENS = 1369  # RAD-DINO: (518 / 14) ** 2 patches
PROMPT_TEXT_TOKENS = 96  # system prompt, question, template markers around the image tokens
SLACK = 1.08  # allocator fragmentation and transient copies, on top of what is counted
RUNTIME_BYTES = int(0.35 * GB)  # tokenizer, image buffers, Python objects made after the check


# ------------------------------------------------------------------ what the files hold


@dataclass
class WeightFiles:
    """Parameter counts by stored dtype (from safetensors headers), and the bytes on disk."""

    numel: dict[str, int] = field(default_factory=dict)
    stored_bytes: int = 0

    @property
    def params(self) -> int:
        return sum(self.numel.values())

    def bytes_as(self, dtype: str) -> int:
        """Bytes of these weights once cast to ``dtype`` (integer buffers keep their size)."""
        return int(self.params * ELEM[dtype])


def weight_files(folder: str | Path, stored_dtype: str = "float32") -> WeightFiles:
    """What a checkpoint folder's weight files hold: exact from safetensors headers, else sized from the
    index's ``total_size`` or the ``.bin`` files' sizes in ``stored_dtype``."""
    folder = Path(folder)
    out = WeightFiles()
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        for shard in shards:
            out.stored_bytes += shard.stat().st_size
            for name, info in safetensors_header(shard).items():
                if name == "__metadata__":
                    continue
                n = 1
                for d in info["shape"]:
                    n *= int(d)
                key = _ST_NAMES.get(info["dtype"], "int8")
                out.numel[key] = out.numel.get(key, 0) + n
        return out
    index = next((p for p in folder.glob("*.index.json")), None)
    total = 0
    if index is not None:
        total = int(json.loads(index.read_text(encoding="utf-8")).get("metadata", {}).get("total_size", 0))
    if not total:
        total = sum(f.stat().st_size for f in folder.glob("pytorch_model*.bin"))
    out.stored_bytes = total
    out.numel[stored_dtype] = int(total / ELEM.get(stored_dtype, 4))
    return out


# ------------------------------------------------------------------ what the machine has


def cpu_flags() -> set[str]:
    """CPU feature flags (x86 ``flags`` / ARM ``Features`` of /proc/cpuinfo; empty when unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_class() -> str:
    """``native`` (bf16 instructions), ``emulated`` (AVX-512 without them: oneDNN converts, ~0.5x float32)
    or ``slow`` (AVX2 and older: ~0.01x float32 measured, unusable for a 7B prefill)."""
    if cpu_bf16_native():
        return "native"
    flags = cpu_flags()
    return "emulated" if {"avx512f", "avx512bw"} <= flags or os.environ.get("LIBRA_CPU_BF16") == "emulated" else "slow"


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16, amx_bf16, ARM bf16); ``LIBRA_CPU_BF16=0/1`` overrides."""
    forced = os.environ.get("LIBRA_CPU_BF16")
    if forced in ("0", "1", "emulated"):
        return forced == "1"
    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16", "bf16"}:
        return True
    if not flags and os.uname().sysname == "Darwin":  # Apple M2 and later have FEAT_BF16
        try:
            import subprocess

            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=5)
            return out.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            return False
    return False


def _meminfo() -> dict[str, int]:
    try:
        lines = Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * 1024
    return out


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 ``memory.max`` or v1 ``limit_in_bytes``)."""
    try:
        lines = Path("/proc/self/cgroup").read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            files = [(Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max", "memory.current")]
        elif "memory" in controllers.split(","):
            files = [(Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes", "memory.usage_in_bytes")]
        else:
            continue
        for base, limit_name, usage_name in files:
            try:
                limit = (base / limit_name).read_text().strip()
                usage = int((base / usage_name).read_text().strip())
            except (OSError, ValueError):
                continue
            if limit in ("max", "") or int(limit) >= 2**60:
                continue
            room = int(limit) - usage
            best = room if best is None else min(best, room)
    return best


def available_bytes(device: str = "cpu") -> tuple[int, str]:
    """(bytes free for a new allocation, where that number comes from); 0 when unknown."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return 0, "no CUDA"
        if device == "cuda" and torch.cuda.device_count() > 1:  # "cuda" alone may spread over all (device_map)
            free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
            return free, f"free memory of {torch.cuda.device_count()} GPUs"
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free), f"free memory of {device}"
    info = _meminfo()
    free = info.get("MemAvailable", info.get("MemFree", 0))
    source = "MemAvailable"
    room = _cgroup_headroom()
    if room is not None and (not free or room < free):
        free, source = room, "cgroup limit"
    return int(free), source


# ------------------------------------------------------------------ what a request needs


@dataclass
class Workload:
    """What will run on a loaded model: rows at once, beams, tokens; ``models`` loaded side by side (serve)."""

    batch_size: int = 1
    num_beams: int = GenerationSettings.num_beams
    max_new_tokens: int = GenerationSettings.max_new_tokens
    prompt_tokens: int | None = None  # None: the image tokens + a typical prompt
    streams: int = 1  # CCD keeps two KV caches per sequence
    models: int = 1

    @classmethod
    def for_settings(cls, settings: Any, batch_size: int | str = 1, models: int = 1) -> Workload:
        """The workload of :class:`~libra_cli.generation.GenerationSettings` at ``batch_size`` (auto: 1)."""
        return cls(batch_size=batch_size if isinstance(batch_size, int) else 1,
                   num_beams=max(int(settings.num_beams), int(settings.num_return_sequences)),
                   max_new_tokens=int(settings.max_new_tokens),
                   streams=2 if getattr(settings, "decoding", "standard") == "ccd" else 1, models=models)


@dataclass
class Estimate:
    """Bytes a request needs at its peak, part by part, against what is available."""

    what: str
    device: str
    dtype: str
    parts: dict[str, int]
    available: int
    source: str

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()) * SLACK)

    @property
    def fits(self) -> bool:
        return self.available <= 0 or self.total <= self.available

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v / GB:.1f}" for k, v in self.parts.items() if v >= 0.05 * GB)
        return f"~{self.total / GB:.1f} GB ({shown})"

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "device": self.device, "dtype": self.dtype, "total_gb": round(self.total / GB, 2),
                "parts_gb": {k: round(v / GB, 3) for k, v in self.parts.items()},
                "available_gb": round(self.available / GB, 2), "source": self.source, "fits": self.fits}


def text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def kv_bytes_per_token(config: Any, elem: float) -> int:
    """K and V of every layer for one token."""
    text = text_config(config)
    heads = int(text.num_attention_heads)
    kv = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or int(text.hidden_size) // heads)
    return int(2 * int(text.num_hidden_layers) * kv * head_dim * elem)


def per_sample_bytes(config: Any, prompt_len: int, max_new_tokens: int, num_beams: int, elem_bytes: float,
                     shared_prompt: bool = False) -> int:
    """Bytes one sample needs while generating: KV cache + logits + prefill activations.

    ``shared_prompt``: beam search keeps the prompt's KV once per sample (``model/shared_prefix.py``).
    """
    text = text_config(config)
    hidden = int(text.hidden_size)
    inter = int(getattr(text, "intermediate_size", 4 * hidden))
    vocab = int(text.vocab_size)
    per_token = kv_bytes_per_token(config, elem_bytes)
    if shared_prompt and num_beams > 1:
        kv_cache = per_token * (prompt_len + num_beams * max_new_tokens)
    else:
        kv_cache = per_token * (prompt_len + max_new_tokens) * num_beams
    logits = vocab * 4 * 3 * num_beams  # float32 logits, processed scores, softmax
    prefill = int(prompt_len * (6 * hidden + 3 * inter) * elem_bytes)  # one layer's transients (sdpa: no P x P)
    return int(kv_cache + logits + prefill)


def pick_batch_size(free_bytes: int, sample_bytes: int, n_items: int, cap: int = 256, headroom: float = 0.7) -> int:
    """The largest batch whose estimated need fits in ``headroom`` of the free memory (at least 1)."""
    fit = int(free_bytes * headroom) // max(sample_bytes, 1)
    return max(1, min(fit, cap, max(n_items, 1)))


def auto_batch_size(loaded: Any, settings: Any, max_prompt_len: int, n_items: int) -> int:
    """``--batch-size auto`` for the in-process engines: the largest batch that fits the free memory (GPU, or RAM
    on a CPU, where it is at most 16: a CPU gains little beyond)."""
    import torch

    dev = str(loaded.device)
    free, _ = available_bytes(dev if dev.startswith("cuda") else "cpu")
    cap = 256 if dev.startswith("cuda") else 16
    elem = torch.empty((), dtype=loaded.dtype).element_size()
    beams = max(settings.num_beams, settings.num_return_sequences)
    if getattr(settings, "decoding", "standard") == "ccd":
        beams *= 2  # CCD keeps two KV caches per sequence (the original and the guided prompt)
    need = per_sample_bytes(loaded.config, max_prompt_len, settings.max_new_tokens, beams, elem, shared_prompt=True)
    return pick_batch_size(free, need, n_items, cap=cap) if free else max(1, min(cap, n_items))


def _tower_files(config: Any, folder: str | Path, override: str | None) -> tuple[WeightFiles, int]:
    """The image encoder's weights and its patch count, from its local folder (RAD-DINO sizes if not local)."""
    name = override or getattr(config, "mm_vision_tower", None) or getattr(config, "vision_tower", None) or ""
    for cand in (Path(str(name)).expanduser(), Path(folder) / str(name), Path(folder) / "vision_tower"):
        if name and (cand / "config.json").is_file():
            tcfg = json.loads((cand / "config.json").read_text(encoding="utf-8"))
            tcfg = tcfg.get("vision_config", tcfg)
            size, patch = tcfg.get("image_size", 518), tcfg.get("patch_size", 14)
            size = size if isinstance(size, int) else size[0]
            return weight_files(cand, "float32"), (int(size) // int(patch)) ** 2
    return WeightFiles({"float32": 87_000_000}), DEFAULT_IMAGE_TOKENS


def inference_estimate(folder: str | Path, config: Any, dtype: str, device: str, workload: Workload | None = None,
                       quant: str | None = None, vision_tower: str | None = None, weights: WeightFiles | None = None,
                       what: str = "") -> Estimate:
    """Peak bytes of loading ``folder`` in ``dtype`` and running ``workload`` on it (nothing is read but headers)."""
    from libra_cli.checkpoint.runtime import saved_dtype

    w = workload or Workload()
    files = weights or weight_files(folder, saved_dtype(config))
    elem = ELEM[dtype]
    if quant:  # bitsandbytes: the decoder's linear layers quantised; embeddings and LM head stay in dtype
        text = text_config(config)
        kept = 2 * int(text.vocab_size) * int(text.hidden_size)
        weight = int((files.params - kept) * ELEM[quant] + kept * elem)
    else:
        weight = files.bytes_as(dtype)
    tower, image_tokens = _tower_files(config, folder, vision_tower)
    prompt = w.prompt_tokens or image_tokens + PROMPT_TEXT_TOKENS
    rows = w.batch_size * w.streams
    sample = per_sample_bytes(config, prompt, w.max_new_tokens, w.num_beams, elem, shared_prompt=True)
    tcfg_hidden = 768
    encoder_act = int(rows * 2 * 13 * (image_tokens + 1) * tcfg_hidden * 4)  # every layer's hidden states, 2 images
    parts = {"weights": weight * w.models, "encoder": tower.bytes_as(dtype) * w.models,
             "kv_cache+activations": sample * rows, "image encoding": encoder_act, "runtime": RUNTIME_BYTES}
    avail, source = available_bytes(device) if device != "mps" else (0, "unknown (MPS)")
    return Estimate(what or str(folder), device, quant or dtype, parts, avail, source)


def choose_dtype(requested: str, device: str, config: Any, folder: str | Path, workload: Workload | None = None,
                 vision_tower: str | None = None, weights: WeightFiles | None = None) -> str:
    """``--dtype auto`` on a CPU: float32 for float32 checkpoints that fit; bfloat16 for 16-bit ones where the CPU
    runs it natively; otherwise float32 only where it fits (emulated bf16 runs at about half float32's speed)."""
    from libra_cli.checkpoint.runtime import dtype_name, resolve_dtype, saved_dtype

    if requested != "auto" or device != "cpu":
        return dtype_name(resolve_dtype(requested, device, config))
    stored = saved_dtype(config)

    def fits(name: str) -> bool:
        return inference_estimate(folder, config, name, device, workload, vision_tower=vision_tower, weights=weights).fits

    if stored == "float32" and fits("float32"):
        return "float32"
    speed = cpu_bf16_class()
    if speed == "native":
        return "bfloat16"
    return "bfloat16" if speed == "emulated" and not fits("float32") else "float32"


class NotEnoughMemory(InputError):
    """A request that does not fit in the free memory (``libra serve`` unloads a model and tries again)."""


def check_enabled() -> bool:
    return os.environ.get("LIBRA_MEMORY_CHECK", "1") not in ("0", "false", "no")


def refuse(est: Estimate, fixes: Iterable[str]) -> None:
    """Raise the one-line error for an estimate that does not fit (no-op when it fits or checks are off)."""
    if est.fits or not check_enabled():
        return
    fix = "; ".join(fixes) or "a machine with more memory"
    raise NotEnoughMemory(f"not enough memory: {est.what} needs {est.describe()} in {est.dtype} on {est.device}, "
                     f"{est.available / GB:.1f} GB is free ({est.source}); {fix} (LIBRA_MEMORY_CHECK=0 skips this check)")


def preflight(folder: str | Path, config: Any, dtype: str, device: str, workload: Workload | None = None,
              quant: str | None = None, vision_tower: str | None = None, what: str = "") -> tuple[str, Estimate]:
    """(compute dtype, estimate) for loading ``folder``; raises a one-line :class:`InputError` when it cannot fit."""
    from libra_cli.checkpoint.runtime import saved_dtype

    w = workload or Workload()
    files = weight_files(folder, saved_dtype(config))
    name = choose_dtype(dtype, device, config, folder, w, vision_tower, files)
    est = inference_estimate(folder, config, name, device, w, quant, vision_tower, files, what)
    if est.fits or not check_enabled():
        return name, est
    fixes = []
    if not quant and name == "float32":
        half = inference_estimate(folder, config, "bfloat16", device, w, None, vision_tower, files)
        if half.fits:
            speed = cpu_bf16_class() if device == "cpu" else "native"
            slow = {"native": "", "emulated": ", about 2x slower on this CPU"}.get(speed, ", very slow on this CPU (no AVX-512)")
            fixes.append(f"use --dtype bfloat16 (needs {half.total / GB:.1f} GB{slow})")
    if w.batch_size > 1 or w.num_beams > 1 or w.models > 1:
        single = inference_estimate(folder, config, name, device, Workload(max_new_tokens=w.max_new_tokens), quant,
                                    vision_tower, files)
        if single.fits:
            fixes.append("lower --batch-size / --num-beams / --max-loaded")
    if not quant:
        fixes.append("--load-4bit on a CUDA GPU" if device.startswith("cuda") else "a GPU (--load-4bit there)")
    fixes.append("a smaller model (libra-v1.0-3b)")
    refuse(est, fixes)
    return name, est


# ------------------------------------------------------------------ training and scorers


def training_estimate(folder: str | Path, config: Any, dtype: str, stage: str, lora: bool, lora_r: int,
                      batch_size: int, seq_len: int, gradient_checkpointing: bool, mixed: bool = False) -> Estimate:
    """Peak bytes of one training step: weights, trainable copies (grads + AdamW states), activations."""
    from libra_cli.checkpoint.runtime import saved_dtype

    text = text_config(config)
    hidden, layers = int(text.hidden_size), int(text.num_hidden_layers)
    inter = int(getattr(text, "intermediate_size", 4 * hidden))
    elem = ELEM[dtype]
    files = weight_files(folder, saved_dtype(config))
    tower, image_tokens = _tower_files(config, folder, None)
    if stage == "align":
        trainable = 12 * 3 * 768 + 768 * hidden * 2 + 4 * hidden * hidden  # TAC: the connector only (order of magnitude)
    elif lora:
        trainable = layers * 7 * lora_r * (2 * hidden + inter) // 2 * 2
    else:
        trainable = files.params
    # grads in the weights' dtype, AdamW's two moments in float32 (+ a float32 master copy when mixed precision)
    state = int(trainable * (elem + 8 + (4 if mixed else 0)))
    tokens = batch_size * (seq_len + image_tokens)
    per_layer = tokens * (10 * hidden + 4 * inter) * elem
    act = int(per_layer * (2 if gradient_checkpointing else layers)) + tokens * hidden * elem * layers * int(gradient_checkpointing)
    logits = tokens * int(text.vocab_size) * 4 * 2
    parts = {"weights": files.bytes_as(dtype), "encoder": tower.bytes_as(dtype), "trainable state": state,
             "activations": act + logits, "runtime": RUNTIME_BYTES}
    device = "cuda" if _cuda() else "cpu"
    avail, source = available_bytes(device)
    return Estimate(f"training {Path(folder).name}", device, dtype, parts, avail, source)


def check_training(est: Estimate, lora: bool, gradient_checkpointing: bool, batch_size: int, dtype: str) -> None:
    """The one-line refusal for a training run that cannot fit, with the changes that shrink it."""
    fixes = []
    if batch_size > 1:
        fixes.append("lower per_device_train_batch_size (global_batch_size stays: more accumulation)")
    if not gradient_checkpointing:
        fixes.append("gradient_checkpointing: true")
    if not lora:
        fixes.append("lora_enable: true")
    if dtype == "float32":
        fixes.append("dtype: bfloat16")
    fixes.append("a GPU with more memory")
    refuse(est, [f"set {f}" if ":" in f else f for f in fixes])


_SCORER_WEIGHTS = (".safetensors", ".bin", ".th", ".pth", ".pt")


def scorer_estimate(paths: Iterable[Path], batch_size: int, device: str, what: str = "scorer models") -> Estimate:
    """Bytes of the scorer models a run loads (float32, as stored) plus one batch of 512-token activations."""
    weights = 0
    for path in paths:
        files = [path] if path.is_file() else [f for f in path.iterdir() if f.suffix in _SCORER_WEIGHTS]
        weights += sum(f.stat().st_size for f in files if f.is_file())
    act = batch_size * 512 * 768 * 4 * 16  # hidden states, attention and MLP transients of one batch
    avail, source = available_bytes(device)
    return Estimate(what, device, "float32", {"weights": weights, "activations": act, "runtime": RUNTIME_BYTES},
                    avail, source)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def scorer_guard(batch_size: int, device: str | None = None) -> Any:
    """A ``ModelOptions.memory_guard`` for ``libra eval``: refuses a scorer model that cannot fit now."""

    def guard(key: str, paths: list[Path]) -> None:
        dev = device or ("cuda" if _cuda() else "cpu")
        est = scorer_estimate(paths, batch_size, dev, what=f"scorer model '{key}'")
        fixes = ["a smaller --batch-size"] if batch_size > 8 else []
        refuse(est, [*fixes, "close other programs", "--metrics without this model"])

    return guard
