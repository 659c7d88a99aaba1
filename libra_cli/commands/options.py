"""Flag groups shared by commands: one definition per flag, passed on by name, never by position.

Typer has no option groups, so each group is a dataclass whose fields are its flags
(``Annotated[..., typer.Option(...)]``). :func:`with_flags` adds a group's fields to a command's
signature (parsing and ``--help`` stay Typer's own) and hands the command one object per group.
The groups that mirror settings are generated from them (:func:`flags_for`): a new decoding
setting is one field in :class:`~libra_cli.requests.GenerationSettings`, and ``--its-name`` exists.

This is also the CLI boundary for the environment: ``LIBRA_MODEL``/``LIBRA_DTYPE``/``LIBRA_DEVICE``
and the decode-loop knobs are read here (``envvar=``) and passed on as parameters; what third-party
libraries read from the environment is set here, never below.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from libra_cli.console import err_console
from libra_cli.requests import CCD_PANEL, GenerationSettings, ModelSpec
from libra_cli.vllm_engine.options import VllmOptions

if TYPE_CHECKING:
    from libra_cli.checkpoint.load import LoadedModel
    from libra_cli.checkpoint.memory import Workload
    from libra_cli.engines.base import BatchEngine

M, G, OUT, ENG = "Model", "Generation", "Output", "Engine"
CCD = CCD_PANEL


# the environment variables the CLI reads for settings (the only place they are read), and settings for developers
ENVVARS = {"model": "LIBRA_MODEL", "dtype": "LIBRA_DTYPE", "device": "LIBRA_DEVICE",
           "compile_backend": "LIBRA_COMPILE_BACKEND", "shared_prefix": "LIBRA_SHARED_PREFIX"}
HIDDEN = ("compile_backend", "shared_prefix")


def flags_for(settings: type, panel: str, *, extra: tuple[tuple[str, Any, Any], ...] = (), prefix: str = "") -> type:
    """A flag group generated from a settings dataclass: one option per field that has help text.

    The settings class defines each setting once (name, type, default, help: ``libra_cli.requests.setting``);
    a nested settings field (``GenerationSettings.ccd``) becomes ``--<field>-<name>`` flags. ``extra``:
    (name, annotation, default) of flags that are no setting (``--engine``). :data:`ENVVARS` name the
    environment variables that set a flag's default; :data:`HIDDEN` flags are for developers.
    """
    fields: list[tuple[str, Any, Any]] = list(extra)
    hints = typing.get_type_hints(settings)
    for f in dataclasses.fields(settings):
        meta = f.metadata
        if "help" not in meta:
            continue
        if dataclasses.is_dataclass(f.default_factory):
            nested = flags_for(f.default_factory, meta.get("panel") or panel, prefix=f"{prefix}{f.name}_")
            fields += [(g.name, g.type, g.default) for g in dataclasses.fields(nested)]
            continue
        flag = f"--{prefix}{f.name}".replace("_", "-")
        key = f"{prefix}{f.name}"
        env = {"envvar": ENVVARS[key]} if key in ENVVARS else {}
        option = typer.Option(*(meta.get("names") or (flag,)), help=meta["help"], hidden=key in HIDDEN,
                              rich_help_panel=meta.get("panel") or panel, **env, **meta.get("option", {}))
        fields.append((f"{prefix}{f.name}", Annotated[hints[f.name], option], f.default))
    return dataclasses.make_dataclass(f"{settings.__name__}Flags",
                                      [(n, t, dataclasses.field(default=d)) for n, t, d in fields])


class ModelFlags(flags_for(ModelSpec, M)):  # type: ignore[misc]
    """Which checkpoint to load and how: the fields of :class:`~libra_cli.requests.ModelSpec`, as flags."""

    def spec(self) -> ModelSpec:
        return ModelSpec(**dataclasses.asdict(self))

    def kwargs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load(self, quiet: bool = False, workload: Workload | None = None) -> LoadedModel:
        """Load the model behind these flags (transformers, in this process), with a spinner on stderr
        (``workload``: what will run on it, for the memory pre-flight check)."""
        from libra_cli.checkpoint.load import load_model

        quiet_third_party()
        if quiet:
            return load_model(**self.kwargs(), quiet=True, workload=workload)  # no download progress either
        with err_console().status(f"loading {self.model} ..."):
            return load_model(**self.kwargs(), workload=workload)

    def load_engine(self, engine: str, settings: GenerationSettings, *, quiet: bool = False,
                    workload: Workload | None = None, **options: Any) -> BatchEngine:
        """The model behind these flags on the engine that runs ``settings`` for ``--engine ENGINE`` (the
        in-process engines, ``hf`` and ``ccd``, run on :meth:`load`'s model)."""
        from libra_cli.engines.registry import for_model, load, name_for

        if name_for(engine, settings) in ("hf", "ccd"):
            return for_model(self.load(quiet, workload), settings)
        quiet_third_party()
        name = {"vllm": "vLLM"}.get(engine, engine)
        with contextlib.nullcontext() if quiet else err_console().status(f"starting {name} on {self.model} ..."):
            return load(engine, self.spec(), settings, quiet=quiet, **options)


class GenerationFlags(flags_for(GenerationSettings, G)):  # type: ignore[misc]
    """Decoding settings: the fields of :class:`~libra_cli.requests.GenerationSettings` (CCD's as ``--ccd-*``)."""

    def settings(self) -> GenerationSettings:
        """The validated settings (a CCD expert that cannot load fails here)."""
        s = GenerationSettings(**dataclasses.asdict(self))
        s.validate()
        if s.decoding == "ccd" and not s.ccd.labels:
            from libra_cli.ccd.experts import check_expert

            check_expert(s.ccd.expert)
        return s


ENGINE_HELP = ("hf (transformers) | vllm (continuous batching, paged attention, tensor parallel; install: "
               "scripts/install_vllm.sh, docs/engines.md).")


class EngineFlags(flags_for(VllmOptions, ENG, extra=((
        "engine", Annotated[str, typer.Option("--engine", help=ENGINE_HELP, rich_help_panel=ENG)], "hf"),))):  # type: ignore[misc]
    """Which engine generates (transformers, or vLLM: docs/engines.md) and how vLLM spreads over GPUs."""

    def check(self) -> str:
        """``hf`` or ``vllm``; vllm must be importable (one-line error with the install command)."""
        from libra_cli.errors import InputError

        if self.engine not in ("hf", "vllm"):
            raise InputError(f"unknown --engine {self.engine!r}; use hf or vllm")
        if self.engine == "vllm":
            from libra_cli.vllm_engine.available import require_vllm

            quiet_vllm()
            require_vllm()
        return self.engine

    def vllm_options(self, seed: int | None = None) -> VllmOptions:
        """The :class:`~libra_cli.vllm_engine.options.VllmOptions` behind these flags."""
        return VllmOptions(**{k: v for k, v in dataclasses.asdict(self).items() if k != "engine"}, seed=seed or 0)


@dataclass
class OutputFlags:
    """How results are shown: machine-readable JSON on stdout, or no progress/summary on stderr."""

    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.", rich_help_panel=OUT)] = False
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, spinner or summary on stderr.", rich_help_panel=OUT)] = False


# ----------------------------------------------------------------------------- the process's environment
# What third-party libraries read from the environment is set by the commands, through these; nothing below
# libra_cli/commands/ writes os.environ (tests/test_architecture.py).

_VLLM_QUIETED = False


def quiet_third_party() -> None:
    """DeepSpeed, when installed, warns on stdout that it fell back to the CPU accelerator unless told."""
    if os.environ.get("LIBRA_DEBUG") == "1" or "DS_ACCELERATOR" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"


def quiet_vllm() -> None:
    """vLLM logs at INFO to stderr; the CLI keeps it to errors (its own progress says what happens) unless
    ``--debug`` or the user's ``VLLM_LOGGING_LEVEL``. Must run before vLLM is imported."""
    global _VLLM_QUIETED
    if "VLLM_LOGGING_LEVEL" not in os.environ and os.environ.get("LIBRA_DEBUG") != "1":
        os.environ["VLLM_LOGGING_LEVEL"] = "ERROR"
        _VLLM_QUIETED = True


def vllm_server_env() -> dict[str, str]:
    """The environment for vLLM's API server: its INFO log (routes, requests) unless the user chose a level."""
    env = dict(os.environ)
    if _VLLM_QUIETED:
        env.pop("VLLM_LOGGING_LEVEL", None)
    return env


def shard_gpus(num_shards: int, shard: int, gpus_per_model: int) -> None:
    """With several shards of a vLLM run on one machine, each shard gets its own GPU(s) (data parallelism):
    vLLM takes its devices from ``CUDA_VISIBLE_DEVICES`` only."""
    if num_shards < 2 or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    import torch

    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", shard))
        first = (local * gpus_per_model) % max(torch.cuda.device_count(), 1)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(gpus_per_model))


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


MODEL_HELP = ModelSpec.__dataclass_fields__["model"].metadata["help"]
ModelBaseOpt = flag_type(ModelFlags, "model_base")
VisionTowerOpt = flag_type(ModelFlags, "vision_tower")
