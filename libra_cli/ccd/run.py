"""A batch of studies through CCD: labels -> guidance prompt and token bias -> the two-stream decoder.

Called by the ``ccd`` engine (:mod:`libra_cli.engines.ccd`), which owns the inputs (prompt
rendering, image features) and the reports; this module owns everything CCD adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import torch

from libra_cli.ccd.engine import decode, reference_history
from libra_cli.ccd.labels import Labels, bias_vector, guide_sentence, label_pieces, token_scores
from libra_cli.ccd.scoring import StopRule
from libra_cli.ccd.sources import labels_for
from libra_cli.ccd.types import Decoded, Study
from libra_cli.checkpoint.load import LoadedModel
from libra_cli.requests import GenerationSettings, Prompt, Sample

# render(sample, guide) -> the guided prompt (the clinical guidance after the question)
Render = Callable[[Sample, str], Prompt]


@dataclass
class CCDResult:
    """One study's CCD answers and what steered them."""

    labels: Labels
    guide: str
    guided_prompt: str
    decoded: Decoded


def run_ccd(loaded: LoadedModel, samples: list[Sample], prompts: list[Prompt], settings: GenerationSettings,
            features: torch.Tensor | None, render: Render, eos_ids: list[int], streamer: object = None
            ) -> list[CCDResult]:
    """CCD answers for every sample (labels from ``settings.ccd.labels`` or the expert, run once, batched)."""
    model = loaded.model
    labels = labels_for(samples, settings.ccd, str(loaded.input_device))
    pieces = lru_cache(maxsize=None)(label_pieces(loaded))
    vocab = model.get_output_embeddings().weight.shape[0]
    studies, guides, guided_prompts = [], [], []
    for s, prompt, labs in zip(samples, prompts, labels, strict=True):
        guide = guide_sentence(labs, settings.ccd.threshold)
        guided = render(s, guide)
        history = reference_history(prompt.ids, loaded.num_image_tokens, loaded.image_token_id)
        studies.append(Study(prompt.ids, guided.ids, history,
                             bias_vector(token_scores(labs, pieces), settings.ccd.gamma, vocab)))
        guides.append(guide)
        guided_prompts.append(guided.text)
    stop = prompts[0].stop if prompts else ""
    pad = loaded.tokenizer.pad_token_id
    decoded = decode(model, studies, features, settings, StopRule(loaded.tokenizer, stop, eos_ids),
                     pad if pad is not None else 0, streamer=streamer)
    return [CCDResult(labs, g, gp, d) for labs, g, gp, d in zip(labels, guides, guided_prompts, decoded, strict=True)]
