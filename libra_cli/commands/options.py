"""Flag groups shared by commands: one definition per flag, passed on by name, never by position.

Typer has no option groups, so each group is a dataclass whose fields are its flags
(``Annotated[..., typer.Option(...)]``). :func:`with_flags` adds a group's fields to a command's
signature (parsing and ``--help`` stay Typer's own) and hands the command one object per group.
A new decoding setting is one field in :class:`~libra_cli.generation.GenerationSettings` plus its
flag in :class:`GenerationFlags` (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

MODEL_HELP = "Hub id (e.g. X-iZhang/libra-v1.0-7b) or checkpoint folder (full, LoRA or projector-only)."
DEFAULT_MODEL = "X-iZhang/libra-v1.0-7b"
M, G, OUT, ENG = "Model", "Generation", "Output", "Engine"
CCD = "Clinical Contrastive Decoding (docs/decoding.md)"


@dataclass
class ModelFlags:
    """Which checkpoint to load and how (``libra_cli.checkpoint.load_model``'s arguments)."""

    model: Annotated[str, typer.Option("--model", "-m", envvar="LIBRA_MODEL", help=MODEL_HELP, rich_help_panel=M)] = DEFAULT_MODEL
    revision: Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit of --model (recorded in outputs).", rich_help_panel=M)] = None
    model_base: Annotated[str | None, typer.Option("--model-base", help="Base model for LoRA / projector-only folders.", rich_help_panel=M)] = None
    vision_tower: Annotated[str | None, typer.Option("--vision-tower", help="Override the encoder path or hub id from config.json.", rich_help_panel=M)] = None
    conv_mode: Annotated[str | None, typer.Option("--conv-mode", help="Prompt template (default: the one the model was trained with).", rich_help_panel=M)] = None
    dtype: Annotated[str, typer.Option("--dtype", envvar="LIBRA_DTYPE", help="auto | bfloat16 | float16 | float32 (auto: checkpoint dtype on GPU; CPU: bfloat16 where native, float32 where it fits).", rich_help_panel=M)] = "auto"
    device: Annotated[str, typer.Option("--device", envvar="LIBRA_DEVICE", help="auto | cuda | cuda:N | mps | cpu.", rich_help_panel=M)] = "auto"
    attn: Annotated[str, typer.Option("--attn", help="auto | sdpa | eager | flash_attention_2.", rich_help_panel=M)] = "auto"
    load_4bit: Annotated[bool, typer.Option("--load-4bit", help="4-bit weights (bitsandbytes extra).", rich_help_panel=M)] = False
    load_8bit: Annotated[bool, typer.Option("--load-8bit", help="8-bit weights (bitsandbytes extra).", rich_help_panel=M)] = False
    jpeg_draft: Annotated[bool, typer.Option("--jpeg-draft", help="Decode large JPEGs at 1/2-1/8 scale (faster, NOT pixel-exact: up to a few grey levels).", rich_help_panel=M)] = False
    compile: Annotated[bool, typer.Option("--compile", help="Greedy/sampling: static KV cache + compiled decode step (CUDA graphs on a GPU; the first batch compiles).", rich_help_panel=M)] = False

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load(self, quiet: bool = False, workload: Any = None) -> Any:
        """Load the model behind these flags, with a spinner on stderr (``workload``: for the memory check)."""
        from libra_cli.checkpoint.load import load_model
        from libra_cli.console import err_console

        if quiet:
            os.environ["LIBRA_QUIET"] = "1"  # no download progress either
            return load_model(**self.kwargs(), workload=workload)
        with err_console().status(f"loading {self.model} ..."):
            return load_model(**self.kwargs(), workload=workload)


@dataclass
class GenerationFlags:
    """Decoding settings, field for field :class:`~libra_cli.generation.GenerationSettings`."""

    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Maximum tokens to generate.", rich_help_panel=G)] = 512
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy / beam search; > 0 samples.", rich_help_panel=G)] = 0.0
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass.", rich_help_panel=G)] = None
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-k sampling.", rich_help_panel=G)] = None
    num_beams: Annotated[int, typer.Option("--num-beams", help="Beam width (paper evaluation: 10).", rich_help_panel=G)] = 1
    length_penalty: Annotated[float, typer.Option("--length-penalty", help="Beam length penalty (paper: 2).", rich_help_panel=G)] = 1.0
    no_repeat_ngram_size: Annotated[int | None, typer.Option("--no-repeat-ngram-size", help="Default: 3 with beams (as the original), else off.", rich_help_panel=G)] = None
    num_return_sequences: Annotated[int, typer.Option("--num-return-sequences", help="Candidates to return (with scores).", rich_help_panel=G)] = 1
    repetition_penalty: Annotated[float | None, typer.Option("--repetition-penalty", help="Repetition penalty.", rich_help_panel=G)] = None
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed for sampling.", rich_help_panel=G)] = None
    decoding: Annotated[str, typer.Option("--decoding", help="standard | ccd (Clinical Contrastive Decoding: expert-guided).", rich_help_panel=CCD)] = "standard"
    ccd_alpha: Annotated[float, typer.Option("--ccd-alpha", help="Weight of the guided prompt's log-probabilities, 0..1.", rich_help_panel=CCD)] = 0.5
    ccd_beta: Annotated[float, typer.Option("--ccd-beta", help="Weight of the expert's token bias, 0..1.", rich_help_panel=CCD)] = 0.5
    ccd_gamma: Annotated[float, typer.Option("--ccd-gamma", help="Token bias clipped at +-log(gamma) (> 0; no clip at <= 1).", rich_help_panel=CCD)] = 10.0
    ccd_threshold: Annotated[float, typer.Option("--ccd-threshold", help="Labels at or above this probability go into the guidance sentence.", rich_help_panel=CCD)] = 0.5
    ccd_expert: Annotated[str, typer.Option("--ccd-expert", help="densenet (torchxrayvision) | medsiglip | a CLIP/SigLIP folder or hub id.", rich_help_panel=CCD)] = "densenet"
    ccd_labels: Annotated[str | None, typer.Option("--ccd-labels", help="Label probabilities per study (JSON/JSONL/CSV) instead of the expert.", rich_help_panel=CCD)] = None

    def settings(self) -> Any:
        """The validated :class:`~libra_cli.generation.GenerationSettings` (a CCD expert that cannot load fails here)."""
        from libra_cli.generation import GenerationSettings

        s = GenerationSettings(**dataclasses.asdict(self))
        s.validate()
        if s.decoding == "ccd" and not s.ccd_labels:
            from libra_cli.ccd.experts import check_expert

            check_expert(s.ccd_expert)
        return s


@dataclass
class OutputFlags:
    """How results are shown: machine-readable JSON on stdout, or no progress/summary on stderr."""

    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.", rich_help_panel=OUT)] = False
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, spinner or summary on stderr.", rich_help_panel=OUT)] = False


@dataclass
class EngineFlags:
    """Which engine generates (transformers, or vLLM: docs/engines.md) and how vLLM spreads over GPUs."""

    engine: Annotated[str, typer.Option("--engine", help="hf (transformers) | vllm (continuous batching, paged attention, tensor parallel; install: scripts/install_vllm.sh, docs/engines.md).", rich_help_panel=ENG)] = "hf"
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", help="vLLM: GPUs one model is split over.", min=1, rich_help_panel=ENG)] = 1
    pipeline_parallel_size: Annotated[int, typer.Option("--pipeline-parallel-size", help="vLLM: pipeline stages (e.g. one per node, with Ray).", min=1, rich_help_panel=ENG)] = 1
    gpu_memory_utilization: Annotated[float | None, typer.Option("--gpu-memory-utilization", help="vLLM: fraction of GPU memory for weights + KV cache (default 0.9; on CPU: of RAM, chosen from free memory).", rich_help_panel=ENG)] = None
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", help="vLLM: no torch.compile / CUDA graphs (starts faster, runs slower).", rich_help_panel=ENG)] = False

    def check(self) -> str:
        """``hf`` or ``vllm``; vllm must be importable (one-line error with the install command)."""
        from libra_cli.errors import InputError

        if self.engine not in ("hf", "vllm"):
            raise InputError(f"unknown --engine {self.engine!r}; use hf or vllm")
        if self.engine == "vllm":
            from libra_cli.vllm_engine.available import require_vllm

            require_vllm()
        return self.engine

    def vllm_options(self, seed: int | None = None) -> Any:
        """The :class:`~libra_cli.vllm_engine.engine.VllmOptions` behind these flags."""
        from libra_cli.vllm_engine.engine import VllmOptions

        return VllmOptions(tensor_parallel_size=self.tensor_parallel_size,
                           pipeline_parallel_size=self.pipeline_parallel_size,
                           gpu_memory_utilization=self.gpu_memory_utilization, enforce_eager=self.enforce_eager,
                           seed=seed or 0)


@dataclass(frozen=True)
class Group:
    """A flag group as one command uses it: some fields left out, some defaults changed."""

    cls: type
    exclude: tuple[str, ...] = ()
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


def with_flags(**groups: type | Group) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: the command gets each group's fields as options and one dataclass per group.

    ``@with_flags(model=ModelFlags, gen=GenerationFlags)`` on ``def infer(current, ..., model: ModelFlags,
    gen: GenerationFlags)``: Typer sees ``--model``, ``--dtype``, ... ``--num-beams``; ``infer`` receives
    ``model=ModelFlags(...)`` and ``gen=GenerationFlags(...)``.
    """
    specs = {name: g if isinstance(g, Group) else Group(g) for name, g in groups.items()}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name not in specs]
        taken = {p.name for p in own}
        owner: dict[str, str] = {}
        added: list[inspect.Parameter] = []
        for gname, spec in specs.items():
            hints = typing.get_type_hints(spec.cls, include_extras=True)
            for f in dataclasses.fields(spec.cls):
                if f.name in spec.exclude:
                    continue
                if f.name in taken or f.name in owner:
                    raise TypeError(f"{fn.__name__}: flag {f.name!r} is defined twice")
                owner[f.name] = gname
                default = spec.defaults.get(f.name, f.default)
                if default is dataclasses.MISSING:  # a required flag
                    default = inspect.Parameter.empty
                added.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                               annotation=hints[f.name]))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values: dict[str, dict[str, Any]] = {g: {} for g in specs}
            for name in [k for k in kwargs if k in owner]:
                values[owner[name]][name] = kwargs.pop(name)
            for gname, spec in specs.items():
                kwargs[gname] = spec.cls(**values[gname])
            return fn(*args, **kwargs)

        params = own + added
        wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
        return wrapper

    return decorate


def flag_type(group: type, name: str) -> Any:
    """One flag of a group, for a command that takes it alone (``libra convert --model-base``)."""
    return typing.get_type_hints(group, include_extras=True)[name]


ModelBaseOpt = flag_type(ModelFlags, "model_base")
VisionTowerOpt = flag_type(ModelFlags, "vision_tower")
