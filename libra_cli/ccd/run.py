"""A batch of studies through CCD: labels -> guidance prompt and token bias -> the two-stream decoder.

Called by :func:`libra_cli.generation.generate` (``settings.decoding == "ccd"``), which owns the
inputs (prompt rendering, image features) and the reports; this module owns everything CCD adds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from libra_cli.ccd.engine import decode, reference_history
from libra_cli.ccd.labels import Labels, bias_vector, guide_sentence, label_pieces, token_scores
from libra_cli.ccd.scoring import Mix, StopRule
from libra_cli.ccd.sources import labels_for
from libra_cli.ccd.types import Decoded, Study

# render(sample, guide) -> (prompt text, prompt ids with image slots expanded, stop string)
Render = Callable[[Any, "str | None"], tuple[str, list[int], str]]


@dataclass
class CCDResult:
    """One study's CCD answers and what steered them."""

    labels: Labels
    guide: str
    guided_prompt: str
    decoded: Decoded


def run_ccd(loaded: Any, samples: list[Any], settings: Any, features: torch.Tensor | None, render: Render,
            eos_ids: list[int], streamer: Any = None) -> list[CCDResult]:
    """CCD answers for every sample (labels from ``settings.ccd_labels`` or the expert, run once, batched)."""
    model = loaded.model
    labels = labels_for(samples, settings, str(model.get_input_embeddings().weight.device))
    pieces = lru_cache(maxsize=None)(label_pieces(loaded))
    vocab = model.get_output_embeddings().weight.shape[0]
    studies, guides, guided_prompts = [], [], []
    stop = ""
    for s, labs in zip(samples, labels, strict=True):
        guide = guide_sentence(labs, settings.ccd_threshold)
        _, original, stop = render(s, None)
        guided_text, guided, _ = render(s, guide)
        history = reference_history(original, loaded.num_image_tokens)
        studies.append(Study(original, guided, history, bias_vector(token_scores(labs, pieces), settings.ccd_gamma, vocab)))
        guides.append(guide)
        guided_prompts.append(guided_text)
    mix = Mix(alpha=settings.ccd_alpha, beta=settings.ccd_beta, ngram=ccd_ngram(settings),
              repetition_penalty=settings.repetition_penalty, temperature=settings.temperature,
              top_k=settings.top_k, top_p=settings.top_p)
    pad = loaded.tokenizer.pad_token_id
    decoded = decode(model, studies, features, mix, StopRule(loaded.tokenizer, stop, eos_ids), settings.max_new_tokens,
                     pad if pad is not None else 0, num_beams=settings.num_beams,
                     length_penalty=settings.length_penalty, num_return_sequences=settings.num_return_sequences,
                     streamer=streamer)
    return [CCDResult(labs, g, gp, d) for labs, g, gp, d in zip(labels, guides, guided_prompts, decoded, strict=True)]


def ccd_ngram(settings: Any) -> int:
    """CCD always blocks repeated trigrams (the reference's default 3); ``--no-repeat-ngram-size`` changes it."""
    return 3 if settings.no_repeat_ngram_size is None else int(settings.no_repeat_ngram_size)
