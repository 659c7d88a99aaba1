"""Beam-search sequence scores without ``output_scores``.

transformers returns ``sequences_scores`` only with ``output_scores=True``, and then also keeps a
``[beams, vocab]`` float32 copy of every step's log-probs (10 beams x 1,024 steps x 32,000 x 4 B =
1.3 GB per study). :class:`StepTopK` keeps only each beam row's top-k processed log-probs per step
(k = 2 x beams + margin, which always holds the token the search picked from that row), and
:func:`sequence_scores` replays transformers' float32 arithmetic over the returned beams' paths:
the scores are bit-identical (``tests/test_decode_speed.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor


class StepTopK(LogitsProcessor):
    """Records each row's top-k processed log-probs per step; must be the last processor (it changes nothing)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        v, i = torch.topk(scores, k=min(self.k, scores.shape[-1]), dim=-1)
        self.values.append(v)
        self.indices.append(i)
        return scores


def recorder(num_beams: int) -> StepTopK:
    """Beam search keeps ``2 x beams`` candidates per sample: the margin covers ties at the boundary."""
    return StepTopK(2 * num_beams + 8)


def sequence_scores(rec: StepTopK, sequences: torch.Tensor, beam_indices: torch.Tensor, prompt_len: int,
                    length_penalty: float) -> list[float] | None:
    """``sequences_scores`` as transformers computes them, or None if a picked token was not recorded.

    A returned beam's score is the float32 running sum of its tokens' processed log-probs (in step
    order, as the search adds them) divided by ``generated_length ** length_penalty``.
    """
    if not rec.values:
        return None
    values = torch.stack(rec.values).cpu()  # [steps, rows, k]
    indices = torch.stack(rec.indices).cpu()
    seqs, paths = sequences.cpu(), beam_indices.cpu()
    out: list[float] = []
    for i in range(seqs.shape[0]):
        length = int((paths[i] >= 0).sum())
        steps, rows = torch.arange(length), paths[i, :length]
        match = indices[steps, rows] == seqs[i, prompt_len:prompt_len + length, None]  # [length, k]
        if not bool(match.any(-1).all()):
            return None
        picked = values[steps, rows].gather(1, match.int().argmax(-1, keepdim=True))[:, 0].numpy()
        total = np.float32(0.0)
        for v in picked:  # float32, one addition per step in order, as the search accumulates
            total = np.float32(total + v)
        out.append(float((torch.tensor([total]) / (length ** length_penalty))[0]))
    return out


def attach(kw: dict[str, Any], num_beams: int) -> StepTopK:
    """Add a recorder to generate's keyword arguments (after any processors already there)."""
    rec = recorder(num_beams)
    procs = list(kw.get("logits_processor") or [])
    from transformers import LogitsProcessorList

    kw["logits_processor"] = LogitsProcessorList([*procs, rec])
    return rec
