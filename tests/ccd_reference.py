"""A slow CCD that follows the reference code line by line (github X-iZhang/CCD ``ccd/ccd_utils.py``).

Full recompute of both prompts at every token, one study, no KV cache, the reference's own
processor objects. Tests compare the fast decoder (``libra_cli.ccd``) against it. Citations are
``ccd_utils.py`` (U) and ``run_ccd.py`` (R) lines at commit e34da84, as in ``shared/spec/ccd.md``.
Nothing here is shared with the library on purpose: the label sentence and token scores are
written out again so that a slip in the library cannot hide in both.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from libra_cli.prompts import expand_image_tokens, get_template, tokenize_with_image


def clinical_guide(labels: dict[str, float], threshold: float = 0.5) -> str:
    """U:220-244."""
    view, clinical = [], []
    for label, score in labels.items():
        if score >= threshold:
            (view if label in ["Frontal", "Lateral"] else clinical).append(label)
    if not clinical and not view:
        return "No clinical guidance based on current findings."
    view_text = f"View type: {', '.join(view)}." if view else ""
    clinical_text = ""
    if clinical:
        clinical_text = "Attention to the following clinical instructions: " + "; ".join(clinical) + "."
    return clinical_text + " " + view_text


def token_score_dict(labels: dict[str, float], tokenizer: Any) -> dict[int, float]:
    """U:169-218 with its defaults (threshold 0, first token of each word, no leading space, decay 0.95)."""
    out: dict[int, float] = {}
    for label, score in labels.items():
        base = score if score >= 0.0 else -score
        for variant in {label, label.lower()}:
            tokens = tokenizer.tokenize(variant.replace("_", " "))
            ids = tokenizer.convert_tokens_to_ids(tokens)
            if not ids:
                continue
            prev_was_space = True
            s = base
            for tok, tid in zip(tokens, ids, strict=True):
                if tok.startswith("Ġ") or tok.startswith("▁") or prev_was_space:
                    if tid not in out or abs(s) > abs(out[tid]):
                        out[tid] = float(s)
                s *= 0.95
                prev_was_space = tok in {"Ġ", "▁"}
    return out


def reference_ccd(loaded: Any, pixel_values: torch.Tensor, query: str, labels: dict[str, float],
                  alpha: float = 0.5, beta: float = 0.5, gamma: float = 10, max_new_tokens: int = 16,
                  temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
                  penalty: float = 1.0, no_repeat_ngram_size: int = 3) -> list[int]:
    """The generated token ids of the reference's ``ccd()`` for one study (``pixel_values`` ``[1, 2, 3, H, W]``)."""
    model, tok = loaded.model, loaded.tokenizer
    conv_mode = loaded.conv_mode
    guide = clinical_guide(labels)  # R:213, default threshold

    def render(message: str) -> tuple[list[int], str]:  # R:194-203, R:216-224, R:228-229
        conv = get_template(conv_mode)
        conv.append(conv.roles[0], message)
        conv.append(conv.roles[1], None)
        return tokenize_with_image(conv.render(), tok, encode=loaded.encode), conv.stop_string

    q_orig = "<image>\n" + query
    input_ids, stop = render(q_orig)
    guidance_ids, _ = render(q_orig + " " + guide)
    n_img = loaded.num_image_tokens
    with torch.inference_mode():
        feats = model.get_image_features(pixel_values.to(loaded.dtype))

    def last_logits(seq: torch.Tensor) -> torch.Tensor:  # U:280-281: full forward, no cache
        ids = torch.tensor([expand_image_tokens(seq[0].tolist(), n_img)])
        return model(input_ids=ids, image_features=feats, attention_mask=torch.ones_like(ids)).logits[:, -1, :]

    scores = token_score_dict(labels, tok)  # U:255-258
    generated = torch.tensor([input_ids])
    dist = torch.tensor([guidance_ids])
    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty=penalty),
                                      NoRepeatNGramLogitsProcessor(no_repeat_ngram_size)])  # U:263-266
    warpers = LogitsProcessorList()  # U:267-274
    if temperature and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k and top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    for _ in range(max_new_tokens):
        with torch.inference_mode():
            lo = last_logits(generated)
            lc = last_logits(dist)
        lo = F.log_softmax(lo, dim=-1)  # U:282-283
        lc = F.log_softmax(lc, dim=-1)
        soft = (1 - alpha) * lo + alpha * lc  # U:285
        expert = soft.clone()  # U:287
        max_bias = math.log(gamma)
        for tid, score in scores.items():  # U:289-300, mode "logit"
            p = max(min(float(score), 1 - 1e-6), 1e-6)
            bias = math.log(p / (1.0 - p))
            if gamma > 1:
                bias = max(-max_bias, min(max_bias, bias))
            expert[:, tid] = expert[:, tid] + bias
        safe = generated.clone()  # U:302-304
        safe[safe < 0] = 0
        soft = processors(safe, soft)  # U:306-307
        soft = warpers(safe, soft)
        final = (1 - beta) * soft + beta * expert  # U:309
        if temperature > 0:  # U:311-315 (do_sample = temperature > 0, R:252)
            nxt = torch.multinomial(F.softmax(final, dim=-1), num_samples=1)
        else:
            nxt = torch.argmax(final, dim=-1, keepdim=True)
        if stop in tok.decode(nxt[0]):  # U:317-320
            break
        generated = torch.cat([generated, nxt], dim=1)  # U:322-323
        dist = torch.cat([dist, nxt], dim=1)
    return generated[0][len(input_ids):].tolist()
