"""Engines by name: one line per engine, resolved only when that engine is asked for.

Like vLLM's model registry (``"module:Class"`` strings) and lm-evaluation-harness's
``@register_model``: registering an engine imports nothing, so ``libra --help`` stays free of
torch and an engine's dependencies (vLLM, openai) load only when it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from libra_cli.errors import InputError
from libra_cli.requests import GenerationSettings, ModelSpec

if TYPE_CHECKING:
    from libra_cli.checkpoint.load import LoadedModel
    from libra_cli.engines.base import BatchEngine

ENGINES: dict[str, str] = {
    "hf": "libra_cli.engines.hf:HfEngine",  # transformers, in this process
    "ccd": "libra_cli.engines.ccd:CcdEngine",  # Clinical Contrastive Decoding, in this process
    "vllm": "libra_cli.engines.vllm:VllmEngine",  # vLLM, in this process (its engine processes)
    "openai": "libra_cli.engines.remote:RemoteEngine",  # an OpenAI-compatible Libra server (libra serve --api)
}


def names() -> list[str]:
    return list(ENGINES)


def engine_class(name: str) -> type[Any]:
    """The class registered as ``name``."""
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def name_for(engine: str, settings: GenerationSettings) -> str:
    """The engine that runs ``settings`` for ``--engine ENGINE``: ``--decoding ccd`` has its own (in-process) engine."""
    if settings.decoding == "ccd":
        if engine != "hf":
            raise InputError(f"--decoding ccd runs in this process: use --engine hf, not --engine {engine}")
        return "ccd"
    return engine


def load(engine: str, spec: ModelSpec, settings: GenerationSettings, *, quiet: bool = False,
         **options: Any) -> BatchEngine:
    """Load ``spec`` on the engine that runs ``settings`` for ``--engine ENGINE`` (``options``: the engine's own)."""
    name = name_for(engine, settings)
    cls = engine_class(name)
    if not hasattr(cls, "load"):  # the openai engine connects to a running server (engines.remote.RemoteModels)
        raise InputError(f"the {name} engine is not loaded from a checkpoint; it serves what a running server has")
    return cls.load(spec, quiet=quiet, **options)


def for_model(model: LoadedModel, settings: GenerationSettings) -> BatchEngine:
    """The in-process engine for a model already loaded: ``ccd`` for ``decoding="ccd"``, else ``hf``."""
    return engine_class(name_for("hf", settings))(model)
