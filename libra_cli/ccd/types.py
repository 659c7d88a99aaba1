"""What the CCD decoder takes and gives, per study."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Study:
    """One study's two prompts (image slots expanded) and its label bias."""

    original: list[int]
    guided: list[int]
    history: list[int]  # the original prompt as the reference holds it: one 0 per image, for the processors
    bias: torch.Tensor  # [V] float32


@dataclass
class Decoded:
    """The answers of one study: token ids (stop token not included, as the reference) and scores."""

    sequences: list[list[int]] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)
