"""The offline vLLM engine: a Libra checkpoint in ``vllm.LLM``, and libra samples in and reports out.

:class:`VllmModel` stands where a ``LoadedModel`` stands for the prompt side (template, codec,
image preprocessing, token count), so ``libra batch`` builds the very same prompt text and pixels
as with ``--engine hf``; only the forward passes run in vLLM. Requests carry libra's token ids
(the image marker as one placeholder id, expanded by the plugin's processor) and the study's
preprocessed pixels, and the reply ids are decoded with libra's codec.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from libra_cli.errors import InputError

# Extra keys the plugin reads from the config (vLLM's hf_overrides); see chat.conv_mode_for / default_query_for.
CONV_MODE_KEY = "libra_conv_mode"
QUERY_KEY = "libra_default_query"


@dataclass
class VllmOptions:
    """How vLLM runs the model (the ``libra batch`` / ``libra serve`` flags of the vLLM engine)."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # None: vLLM's 0.9 on GPU; on CPU see cpu_memory()
    kv_cache_gb: float | None = None  # CPU: KV cache size (default 1 GiB); GPU: overrides the fraction
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False  # skip torch.compile / CUDA graphs: faster start, slower steps
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise InputError("--tensor-parallel-size and --pipeline-parallel-size must be at least 1")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise InputError("--gpu-memory-utilization must be in (0, 1]")


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


class VllmModel:
    """A Libra checkpoint loaded in vLLM, with libra's prompt side (the ``LoadedModel`` fields batch reads)."""

    device = "vllm"

    def __init__(self, llm: Any, name: str, folder: str, config: Any, conv_mode: str, dtype: Any,
                 load_seconds: float) -> None:
        from libra_cli.vllm_engine.processing import tower_geometry

        self.llm = llm
        self.name = name
        self.folder = folder
        self.config = config
        self.conv_mode = conv_mode
        self.dtype = dtype
        self.load_seconds = load_seconds
        self.vtok = llm.get_tokenizer()  # LibraTokenizer: hf tokenizer + codec + placeholder id
        self.tokenizer = self.vtok.hf
        self.codec = self.vtok.codec
        self.geometry = tower_geometry(config, folder)
        self.image_processor = self.geometry.processor
        self.kind = "full"
        self.info: dict[str, Any] = {"engine": "vllm"}

    # the LoadedModel interface that prompts and batch use
    def encode(self, text: str) -> list[int]:
        return self.codec.encode(text) if self.codec is not None else list(self.tokenizer(text).input_ids)

    def decode(self, ids: list[int]) -> str:
        return self.vtok.decode(ids)

    @property
    def num_image_tokens(self) -> int:
        return self.geometry.num_tokens

    @property
    def pad_images(self) -> bool:
        return self.geometry.pad

    @property
    def uses_prior(self) -> bool:
        return str(getattr(self.config, "mm_projector_type", "")) == "TAC"

    @property
    def placeholder_id(self) -> int:
        return int(self.vtok.placeholder_id)

    def close(self) -> None:
        """Stop vLLM's engine processes now (tests and benchmarks start several engines in one process)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if core is not None:
            core.shutdown()

    @property
    def max_num_seqs(self) -> int:
        return int(self.llm.llm_engine.vllm_config.scheduler_config.max_num_seqs)


def full_checkpoint(model: str, who: str, alternative: str = "") -> tuple[str, Any]:
    """(local folder, config) of a full checkpoint; vLLM cannot apply LoRA or projector-only folders."""
    from libra_cli.checkpoint import layout
    from libra_cli.checkpoint.hub import hub_folder
    from libra_cli.checkpoint.load import read_config

    folder = hub_folder(model, what="model")
    kind = layout.folder_kind(folder)
    if kind != "full":
        raise InputError(f"{model} is a {kind} folder; {who} runs full checkpoints: merge it first "
                         f"(libra convert FOLDER merged/ --model-base BASE){alternative}")
    return folder, read_config(folder)


def load_vllm_model(model: str, *, vision_tower: str | None = None, conv_mode: str | None = None,
                    dtype: str = "auto", options: VllmOptions | None = None) -> VllmModel:
    """Start vLLM on a full Libra checkpoint (hub id or folder)."""
    from libra_cli import prompts
    from libra_cli.checkpoint import registry, runtime
    from libra_cli.console import quiet_transformers, warn_once
    from libra_cli.vllm_engine.available import require_vllm

    require_vllm()
    quiet_transformers()
    options = options or VllmOptions()
    options.validate()
    t0 = time.perf_counter()
    folder, config = full_checkpoint(model, "--engine vllm", " or use --engine hf")
    chosen = registry.default_conv_mode(model, config)
    if conv_mode and conv_mode != chosen:
        prompts.get_template(conv_mode)
        warn_once(f"conv:{model}:{conv_mode}",
                  f"--conv-mode {conv_mode} differs from {chosen!r}, the template {model} was trained with")
    conv = conv_mode or chosen
    prompts.get_template(conv)
    device = "cpu" if on_cpu() else "cuda"
    torch_dtype = runtime.resolve_dtype(dtype, device, config)
    from vllm import LLM

    kw = engine_kwargs(folder, runtime.dtype_name(torch_dtype), options, vision_tower, conv)
    kw["disable_log_stats"] = True
    llm = LLM(**kw)
    if vision_tower:
        config.mm_vision_tower = kw["hf_overrides"]["mm_vision_tower"]
    return VllmModel(llm, str(model), folder, config, conv, torch_dtype, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------- requests


def request(vm: VllmModel, sample: Any, current: np.ndarray, prior: np.ndarray | None) -> dict[str, Any]:
    """One vLLM prompt: libra's ids with one placeholder for the study, and its preprocessed images."""
    from libra_cli.generation import prompt_ids

    text, libra_ids, _ = prompt_ids(vm, sample)
    ids = vm.vtok.encode_study(text)
    images = [current] if prior is None else [current, prior]
    return {"prompt_token_ids": ids, "multi_modal_data": {"image": images}, "prompt": text, "libra_ids": libra_ids}


LIBRA_KEYS = ("prompt", "libra_ids")  # what a request carries for libra (text, transformers-side ids), not for vLLM


def engine_prompt(request: dict[str, Any]) -> dict[str, Any]:
    """The part of a :func:`request` that vLLM takes."""
    return {k: v for k, v in request.items() if k not in LIBRA_KEYS}


def sampling_params(vm: VllmModel, settings: Any, stop: str, seed: int | None = None) -> Any:
    """``GenerationSettings`` -> ``vllm.SamplingParams`` (greedy, or sampling with n candidates)."""
    from vllm import SamplingParams

    from libra_cli.generation import stop_ids

    eos_ids, stop_strings = stop_ids(vm, stop)
    kw: dict[str, Any] = {
        "max_tokens": settings.max_new_tokens,
        "n": settings.num_return_sequences,
        "stop_token_ids": eos_ids,
        "skip_special_tokens": True,
        "detokenize": bool(stop_strings),  # text is decoded with libra's codec; vLLM only for stop strings
        "output_kind": None,
    }
    if stop_strings:
        kw.update(stop=stop_strings, include_stop_str_in_output=True)
    if settings.do_sample:
        kw.update(temperature=settings.temperature, top_p=settings.top_p if settings.top_p is not None else 1.0,
                  top_k=settings.top_k if settings.top_k else 0, seed=seed if seed is not None else settings.seed)
    else:
        kw["temperature"] = 0.0
    if settings.repetition_penalty:
        kw["repetition_penalty"] = settings.repetition_penalty
    if settings.num_return_sequences > 1:
        kw["logprobs"] = 0
    kw = {k: v for k, v in kw.items() if v is not None}
    return SamplingParams(**kw)


def beam_params(settings: Any) -> Any:
    from vllm.sampling_params import BeamSearchParams

    return BeamSearchParams(beam_width=settings.num_beams, max_tokens=settings.max_new_tokens,
                            length_penalty=settings.length_penalty)


def report(vm: VllmModel, sample: Any, text_prompt: str, stop: str, candidates: list[tuple[list[int], float | None]],
           prior_is_dummy: bool, settings: Any) -> Any:
    """libra's ``Report`` from vLLM's candidate ids, decoded and trimmed as ``generation.generate`` does."""
    from libra_cli.generation import Candidate, Report, stop_ids, trim_at_eos
    from libra_cli.prompts import strip_stop

    eos_ids, _ = stop_ids(vm, stop)
    cands = []
    for ids, score in candidates:
        ids = trim_at_eos(list(ids), eos_ids, vm.tokenizer.pad_token_id)
        cands.append(Candidate(strip_stop(vm.decode(ids), stop), ids, score))
    return Report(text=cands[0].text, prompt=text_prompt, token_ids=cands[0].token_ids, candidates=cands,
                  prior_is_dummy=prior_is_dummy, settings=settings.to_dict(), id=sample.id)
