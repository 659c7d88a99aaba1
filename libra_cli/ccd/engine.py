"""CCD decoding for a batch of studies: greedy and sampling as the reference, beam search as an extension.

The reference recomputes both prompts from scratch at every token, one study at a time. Here both
streams keep a KV cache (:mod:`libra_cli.ccd.streams`), every study of the batch advances in the
same forward, and studies that stop leave the batch. The per-step arithmetic is the reference's
(:mod:`libra_cli.ccd.scoring`), so greedy decoding picks the same tokens.

Why a dedicated loop rather than ``model.generate`` with a logits processor that runs the guided
stream: that costs two forwards per step (``generate``'s and the processor's), where this loop runs
one forward over ``2B`` rows; it also needs no custom stopping criterion (the reference drops the
stop token) and no beam-reordering inferred from ``input_ids``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from libra_cli.ccd.beam import beam_search
from libra_cli.ccd.scoring import Scorer, StopRule
from libra_cli.ccd.streams import Streams
from libra_cli.ccd.types import Decoded, Study
from libra_cli.requests import GenerationSettings


def reference_history(ids: list[int], num_image_tokens: int, image_token: int) -> list[int]:
    """Expanded prompt ids -> the reference's (one placeholder per image), image placeholders as 0."""
    out: list[int] = []
    run = 0
    for t in ids:
        if t == image_token:
            run += 1
            if run % num_image_tokens == 1 or num_image_tokens == 1:
                out.append(0)
        else:
            run = 0
            out.append(t)
    return out


def decode(
    model: Any,
    studies: list[Study],
    features: torch.Tensor | None,
    settings: GenerationSettings,
    stop: StopRule,
    pad_id: int,
    streamer: Any = None,
) -> list[Decoded]:
    """CCD answers for every study (``settings.num_return_sequences`` each)."""
    max_new_tokens = settings.max_new_tokens
    with torch.inference_mode():
        streams = Streams(model, pad_id)
        logits = streams.prefill([s.original for s in studies], [s.guided for s in studies], features)
        bias = torch.stack([s.bias for s in studies]).to(logits.device)
        scorer = Scorer(settings, bias, [s.history for s in studies])
        if settings.num_beams > 1:
            return beam_search(streams, scorer, logits, stop, max_new_tokens, settings.num_beams,
                               settings.length_penalty, settings.num_return_sequences)
        n = settings.num_return_sequences
        if n > 1:  # independent samples of each study: repeat its rows after the shared prefill
            idx = torch.arange(len(studies)).repeat_interleave(n)
            streams.select(idx)
            scorer.select(idx.tolist())
            logits = logits.view(len(studies), 2, -1)[idx.to(logits.device)].reshape(-1, logits.shape[-1])
        seqs, scores = _sample(streams, scorer, logits, stop, max_new_tokens, settings.do_sample, n > 1, streamer)
    return [Decoded(seqs[i * n: (i + 1) * n], scores[i * n: (i + 1) * n]) for i in range(len(studies))]


def _sample(streams: Streams, scorer: Scorer, logits: torch.Tensor, stop: Callable[[int], bool], max_new_tokens: int,
            do_sample: bool, with_scores: bool, streamer: Any) -> tuple[list[list[int]], list[float | None]]:
    """Greedy (argmax) or sampling (multinomial over softmax) on the CCD scores, one token per row per step."""
    rows = logits.shape[0] // 2
    out: list[list[int]] = [[] for _ in range(rows)]
    totals: list[float | None] = [0.0 if with_scores else None for _ in range(rows)]
    active = list(range(rows))
    if streamer is not None:
        streamer.put(torch.zeros(1, 0, dtype=torch.long))  # the prompt (streamers skip it)
    for step in range(max_new_tokens):
        final = scorer.final(logits)
        if do_sample:
            nxt = torch.multinomial(F.softmax(final, dim=-1), num_samples=1)[:, 0]
        else:
            nxt = torch.argmax(final, dim=-1)
        tokens = nxt.tolist()
        if with_scores:
            logp = F.log_softmax(final.float(), dim=-1).gather(1, nxt[:, None])[:, 0].tolist()
        keep = []
        for j, (row, tok) in enumerate(zip(active, tokens, strict=True)):
            if stop(tok):
                continue
            out[row].append(tok)
            if with_scores:
                totals[row] += logp[j]  # type: ignore[operator]
            keep.append(j)
        if streamer is not None and keep:
            streamer.put(torch.tensor([tokens[0]]))
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            streams.select(torch.tensor(keep))
            scorer.select(keep)
            active = [active[j] for j in keep]
            nxt = nxt[keep]
        scorer.push([tokens[j] for j in keep])
        logits = streams.step(nxt)
    if streamer is not None:
        streamer.end()
    return out, totals
