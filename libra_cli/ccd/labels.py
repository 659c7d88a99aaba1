"""Label probabilities -> the two things CCD derives from them: the guidance sentence and the token bias.

Both follow the reference code (github X-iZhang/CCD, ``ccd/ccd_utils.py``; ``shared/spec/ccd.md``
sections 2 and 3) to the letter: labels are used verbatim and in the order given, ``"Frontal"`` and
``"Lateral"`` are the view, and every label (views included) biases the first sub-token of each of
its words through the logit of its probability, clipped at +-log(gamma).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from libra_cli.checkpoint.load import LoadedModel

Labels = dict[str, float]
VIEW_LABELS = ("Frontal", "Lateral")
NO_GUIDANCE = "No clinical guidance based on current findings."
GUIDE_PREFIX = "Attention to the following clinical instructions: "
# the reference's defaults for the token bias (get_expert_model_token_score_dict): bias every label,
# first sub-token of each word, no leading space, score decayed by 0.95 per token position
_SIGN_THRESHOLD = 0.0
_DECAY = 0.95
_WORD_STARTS = ("\u2581", "\u0120")  # SentencePiece "▁" and byte-level BPE "Ġ"


def guide_sentence(labels: Mapping[str, float], threshold: float = 0.5) -> str:
    """The clinical guidance appended to the second prompt (labels with probability >= threshold)."""
    views = [k for k, v in labels.items() if v >= threshold and k in VIEW_LABELS]
    clinical = [k for k, v in labels.items() if v >= threshold and k not in VIEW_LABELS]
    if not clinical and not views:
        return NO_GUIDANCE
    view_text = f"View type: {', '.join(views)}." if views else ""
    clinical_text = GUIDE_PREFIX + "; ".join(clinical) + "." if clinical else ""
    return clinical_text + " " + view_text


def token_scores(labels: Mapping[str, float], pieces: Callable[[str], tuple[list[str], list[int]]]) -> dict[int, float]:
    """Token id -> score, from every label's first-sub-token-of-each-word (``pieces(text) -> (tokens, ids)``).

    The score decays by 0.95 per token *position* (included or not); a token is included when it
    starts a word or follows a lone word-start piece; collisions keep the largest |score|, the first
    on ties. Variants are the label and its lower case, as the reference.
    """
    out: dict[int, float] = {}
    for label, score in labels.items():
        base = score if score >= _SIGN_THRESHOLD else -score
        for variant in dict.fromkeys((label, label.lower())):  # the reference's set; order is irrelevant (max |score|)
            tokens, ids = pieces(variant.replace("_", " "))
            prev_was_space = True
            s = base
            for tok, tid in zip(tokens, ids, strict=True):
                if tok.startswith(_WORD_STARTS) or prev_was_space:
                    if tid not in out or abs(s) > abs(out[tid]):
                        out[tid] = float(s)
                s *= _DECAY
                prev_was_space = tok in _WORD_STARTS
    return out


def bias_value(score: float, gamma: float) -> float:
    """logit(p) with p clamped to [1e-6, 1 - 1e-6], clipped to +-log(gamma) when gamma > 1 (reference "logit" mode)."""
    max_bias = math.log(gamma)
    p = max(min(float(score), 1 - 1e-6), 1e-6)
    bias = math.log(p / (1.0 - p))
    if gamma > 1:
        bias = max(-max_bias, min(max_bias, bias))
    return bias


def bias_vector(scores: Mapping[int, float], gamma: float, vocab_size: int) -> torch.Tensor:
    """Dense float32 ``[vocab]`` bias (0 elsewhere): adding it equals the reference's per-token adds."""
    out = torch.zeros(vocab_size, dtype=torch.float32)
    for tid, score in scores.items():
        if 0 <= tid < vocab_size:
            out[tid] = bias_value(score, gamma)
    return out


def label_pieces(loaded: LoadedModel) -> Callable[[str], tuple[list[str], list[int]]]:
    """``text -> (tokens, ids)`` as the reference's ``tokenizer.tokenize`` (slow tokenizer, no BOS).

    SentencePiece models go through the model's slow-exact codec (``LoadedModel.encode``); other
    tokenizers through their own ``tokenize``.
    """
    tok = loaded.tokenizer
    if getattr(loaded, "codec", None) is not None:
        bos = tok.bos_token_id

        def spm(text: str) -> tuple[list[str], list[int]]:
            ids = loaded.encode(text)
            if ids and bos is not None and ids[0] == bos:
                ids = ids[1:]
            return list(tok.convert_ids_to_tokens(ids)), ids

        return spm

    def plain(text: str) -> tuple[list[str], list[int]]:
        tokens = tok.tokenize(text)
        return tokens, list(tok.convert_tokens_to_ids(tokens))

    return plain
