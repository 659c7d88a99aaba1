"""How vLLM runs a Libra checkpoint: the options (one definition; ``libra batch`` / ``libra serve`` flags are
generated from them) and the ``vllm.LLM`` / ``vllm serve`` arguments every Libra run needs.

Imports neither vLLM nor torch at import time: ``libra --help`` reads the options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from libra_cli.errors import InputError
from libra_cli.requests import setting

# Extra keys the plugin reads from the config (vLLM's hf_overrides); see chat.conv_mode_for / default_query_for.
CONV_MODE_KEY = "libra_conv_mode"
QUERY_KEY = "libra_default_query"


@dataclass
class VllmOptions:
    """How vLLM runs the model; the fields with help text are ``libra batch`` / ``libra serve`` flags."""

    tensor_parallel_size: int = setting(1, "vLLM: GPUs one model is split over.", min=1)
    pipeline_parallel_size: int = setting(1, "vLLM: pipeline stages (e.g. one per node, with Ray).", min=1)
    gpu_memory_utilization: float | None = setting(
        None, "vLLM: fraction of GPU memory for weights + KV cache (default 0.9; on CPU: of RAM, chosen from free "
        "memory).")
    enforce_eager: bool = setting(False, "vLLM: no torch.compile / CUDA graphs (starts faster, runs slower).")
    kv_cache_gb: float | None = None  # CPU: KV cache size (default 1 GiB); GPU: overrides the fraction
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise InputError("--tensor-parallel-size and --pipeline-parallel-size must be at least 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise InputError("--gpu-memory-utilization must be in (0, 1]")

    @property
    def gpus_per_model(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def cpu_memory_fraction() -> float:
    """vLLM's CPU backend reserves ``gpu_memory_utilization`` x RAM and refuses to start if that is not free."""
    import psutil

    vm = psutil.virtual_memory()
    return round(max(0.05, min(0.5, 0.8 * vm.available / vm.total)), 2)


def engine_kwargs(folder: str, dtype: str, options: VllmOptions, vision_tower: str | None = None,
                  conv_mode: str | None = None, default_query: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` / ``vllm serve`` that every Libra run needs.

    vLLM sees the local folder, so what libra knows from the hub id (the template and question a
    published model was trained with) travels in ``hf_overrides``.
    """
    overrides: dict[str, Any] = {}
    if vision_tower:
        overrides["mm_vision_tower"] = os.path.abspath(vision_tower) if os.path.isdir(vision_tower) else vision_tower
    if conv_mode:
        overrides[CONV_MODE_KEY] = conv_mode
    if default_query:
        overrides[QUERY_KEY] = default_query
    kw: dict[str, Any] = {
        "model": folder,
        "tokenizer_mode": "libra",
        "dtype": dtype,
        "enable_prefix_caching": True,
        "limit_mm_per_prompt": {"image": 2},
        "tensor_parallel_size": options.tensor_parallel_size,
        "pipeline_parallel_size": options.pipeline_parallel_size,
        "enforce_eager": options.enforce_eager,
        "seed": options.seed,
        "trust_remote_code": False,
        "max_logprobs": 128,  # exact beam search asks for K + banned-token log-probs per beam (vllm_engine.beams)
    }
    if overrides:
        kw["hf_overrides"] = overrides
    cpu = on_cpu()
    if options.gpu_memory_utilization is not None:
        kw["gpu_memory_utilization"] = options.gpu_memory_utilization
    elif cpu:
        kw["gpu_memory_utilization"] = cpu_memory_fraction()
    if options.kv_cache_gb is not None or cpu:
        kw["kv_cache_memory_bytes"] = int((options.kv_cache_gb or 1.0) * (1 << 30))
    if options.max_model_len is not None:
        kw["max_model_len"] = options.max_model_len
    if options.max_num_seqs is not None:
        kw["max_num_seqs"] = options.max_num_seqs
    kw.update(options.extra)
    return kw
