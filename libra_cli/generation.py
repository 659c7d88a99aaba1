"""Report generation, the Python API: one function for single samples and batches (the CLI and the web UI call it).

A loaded model runs on the in-process engine its settings name (:mod:`libra_cli.engines`):
``hf`` (transformers' ``generate``) for standard decoding, ``ccd`` for ``decoding="ccd"``. The
request and report types live in :mod:`libra_cli.requests` and are re-exported here, as is the
transformers engine's ``prepare_batch``.
"""

from __future__ import annotations

from typing import Any

import torch

from libra_cli.checkpoint.load import EncoderOutputs, LoadedModel
from libra_cli.engines.base import Engine
from libra_cli.engines.hf import BatchInputs, generate_kwargs, prepare_batch
from libra_cli.engines.registry import for_model
from libra_cli.requests import (
    DECODINGS,
    Candidate,
    CCDSettings,
    GenerationSettings,
    Prompt,
    Report,
    Sample,
    default_query,
    prompt_ids,
    stop_ids,
    trim_at_eos,
)

__all__ = [
    "DECODINGS", "BatchInputs", "CCDSettings", "Candidate", "GenerationSettings", "Prompt", "Report", "Sample",
    "default_query", "encode_images", "generate", "generate_kwargs", "generate_report", "prepare_batch",
    "prompt_ids", "stop_ids", "trim_at_eos",
]


def encode_images(loaded: LoadedModel, pixels: list[Any]) -> torch.Tensor:
    """The encoder's output for preprocessed images (``[3, H, W]`` each): ``[N, L, P, D]`` on the model's device."""
    return loaded.encode_images(pixels)


def generate(
    loaded: LoadedModel | Engine,
    samples: list[Sample],
    settings: GenerationSettings | None = None,
    streamer: Any = None,
    image_features: torch.Tensor | None = None,
    encoder_outputs: list[EncoderOutputs] | None = None,
) -> list[Report]:
    """Generate one report per sample (a batch), on ``loaded``'s engine for ``settings``, or on an engine.

    Images come from the samples, or precomputed: ``encoder_outputs`` (per sample, the current's and
    the prior's encoder output ``[L, P, D]`` from :func:`encode_images`; prior None = dummy prior), or
    ``image_features`` (connector output ``[B, P, H]``).
    """
    settings = settings or GenerationSettings()
    if isinstance(loaded, Engine):
        if streamer is not None or image_features is not None or encoder_outputs is not None:
            raise TypeError("streamer, image_features and encoder_outputs apply to a loaded model (the in-process engines)")
        return loaded.generate(samples, settings)
    return for_model(loaded, settings).generate(samples, settings, streamer=streamer, image_features=image_features,
                                                encoder_outputs=encoder_outputs)


def generate_report(
    loaded: LoadedModel | Engine,
    current: Any,
    prior: Any | None = None,
    query: str | None = None,
    context: str | None = None,
    settings: GenerationSettings | None = None,
    streamer: Any = None,
    history: list[tuple[str, str]] | None = None,
) -> Report:
    """Generate the report for one study (current image, optional prior)."""
    return generate(loaded, [Sample(current, prior, query, context, history=history)], settings, streamer)[0]
