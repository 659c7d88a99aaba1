"""transformers' beam search driven by vLLM: the paper's decoding (3-gram ban, length penalty) on ``--engine vllm``.

vLLM's own beam search has no ``no_repeat_ngram_size`` and normalises scores by prompt + generated
length. This loop runs transformers' algorithm (``GenerationMixin._beam_search``) and asks vLLM only
for each beam's next-token log-probs, one token per ``LLM.generate`` call (prefix caching makes a
step one new token, as in vLLM's own beam search):

- transformers bans repeated n-grams *after* ``log_softmax``, so the ban is a filter on each beam's
  top list: asking for ``K + |banned|`` log-probs gives exactly transformers' candidates;
- the top ``K = max(2, 1 + stop ids) x beams`` continuations by running score; a continuation ends on
  a stop id or at the last step; only the first ``beams`` of them may end; an ended beam's score is
  divided by ``generated_length ** length_penalty``;
- a study stops when its ``beams`` ended slots are full and the best running score over
  ``generated_length ** length_penalty`` no longer beats the worst ended one (``early_stopping=False``).

Scores are float32 sums as in transformers. ``docs/engines.md`` says what is and is not exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOGPROBS_CAP = 128  # = the engine's max_logprobs (engine.engine_kwargs): K + banned tokens per beam


def banned_tokens(seq: np.ndarray, n: int) -> set[int]:
    """transformers' ``NoRepeatNGramLogitsProcessor`` for one hypothesis (prompt ids + generated ids)."""
    if n <= 0 or len(seq) + 1 < n:
        return set()
    if n == 1:
        return set(seq.tolist())
    windows = len(seq) - n + 1
    if windows <= 0:
        return set()
    prefix = seq[len(seq) - n + 1:]
    mask = np.ones(windows, dtype=bool)
    for j in range(n - 1):
        mask &= seq[j:j + windows] == prefix[j]
    return set(seq[n - 1:n - 1 + windows][mask].tolist())


@dataclass
class BeamStudy:
    """One study's search state: vLLM's prompt, libra's prompt ids (the n-gram history), the beams."""

    prompt: dict[str, Any]  # vLLM prompt: prompt_token_ids (one placeholder) + multi_modal_data
    history: np.ndarray  # libra's prompt ids as transformers sees them (one placeholder per image vector)
    running: list[tuple[list[int], np.float32]] = field(default_factory=lambda: [([], np.float32(0.0))])
    finished: list[tuple[np.float32, list[int]]] = field(default_factory=list)
    improvable: bool = True
    open: bool = True


def beam_search(llm: Any, studies: list[BeamStudy], *, num_beams: int, max_new_tokens: int, length_penalty: float,
                no_repeat_ngram_size: int, stop_ids: list[int], num_return_sequences: int,
                logprobs_cap: int = LOGPROBS_CAP) -> list[list[tuple[list[int], float]]]:
    """transformers' beam bookkeeping, step by step, for many studies at once (one engine call a step).

    Returns, per study, ``num_return_sequences`` (token ids, score) best first.
    """
    from vllm import SamplingParams

    k = max(2, 1 + len(stop_ids)) * num_beams
    stops = set(stop_ids)
    for t in range(max_new_tokens):
        prompts, params, owners = [], [], []
        for si, st in enumerate(studies):
            if not st.open:
                continue
            for bi, (toks, _) in enumerate(st.running):
                ban = banned_tokens(np.concatenate([st.history, np.asarray(toks, dtype=np.int64)]), no_repeat_ngram_size)
                prompts.append({**st.prompt, "prompt_token_ids": st.prompt["prompt_token_ids"] + toks})
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprobs=min(k + len(ban), logprobs_cap),
                                             detokenize=False))
                owners.append((si, bi, ban))
        if not prompts:
            break
        outs = llm.generate(prompts, params, use_tqdm=False)
        cands: dict[int, list[tuple[np.float32, int, int]]] = {}
        for out, (si, bi, ban) in zip(outs, owners, strict=True):
            score = studies[si].running[bi][1]
            for tok, lp in out.outputs[0].logprobs[0].items():
                if tok not in ban:
                    cands.setdefault(si, []).append((np.float32(score + np.float32(lp.logprob)), bi, tok))
        last = t + 1 == max_new_tokens
        norm = np.float32((t + 1) ** length_penalty)
        for si, cs in cands.items():
            st = studies[si]
            top = sorted(cs, key=lambda c: (-c[0], c[1], c[2]))[:k]
            ends = [c[2] in stops or last for c in top]
            if st.improvable:
                for c, end in list(zip(top, ends, strict=True))[:num_beams]:
                    if end:
                        st.finished.append((np.float32(c[0] / norm), st.running[c[1]][0] + [c[2]]))
                st.finished.sort(key=lambda f: -f[0])  # stable: earlier ties first, as transformers' merge
                del st.finished[num_beams:]
            st.running = [(st.running[c[1]][0] + [c[2]], c[0]) for c, end in zip(top, ends, strict=True)
                          if not end][:num_beams]
            if st.improvable and len(st.finished) == num_beams and st.running:
                st.improvable = bool(st.running[0][1] / norm > st.finished[-1][0])
            st.open = st.improvable and not last and bool(st.running)
    results = []
    for st in studies:
        best = st.finished or [(np.float32(s / np.float32(max(len(toks), 1) ** length_penalty)), toks)
                               for toks, s in st.running]
        results.append([(toks, float(s)) for s, toks in best[:num_return_sequences]])
    return results
