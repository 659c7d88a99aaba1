"""Beam search with CCD: an extension (the reference refuses beams, ``run_ccd.py`` R:238-243).

Each beam carries both streams; the step log-probabilities are the log-softmax of the CCD mixture
``(1 - beta) * soft + beta * expert``, then the processors (repetition penalty, n-gram blocking),
exactly where transformers' beam search applies them to the model's log-softmax. The bookkeeping
is transformers' beam search (``early_stopping=False``, ``2 * num_beams`` candidates per step, the
length penalty on the generated length), so CCD beams with alpha = beta = 0 equal ordinary beam
search with n-gram blocking; tests check that. A study whose best hypotheses can no longer change
leaves the batch at once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from libra_cli.ccd.scoring import Scorer
from libra_cli.ccd.streams import Streams
from libra_cli.ccd.types import Decoded

_NEG = -1.0e9


class _Beams:
    """Running and finished hypotheses of the active studies, ``[b, K, ...]`` tensors."""

    def __init__(self, b: int, k: int, max_new: int, device: torch.device) -> None:
        self.k = k
        self.run_seq = torch.full((b, k, max_new), -1, dtype=torch.long, device=device)
        self.run_score = torch.zeros((b, k), device=device)
        self.run_score[:, 1:] = _NEG  # only the first beam expands at step one
        self.fin_seq = self.run_seq.clone()
        self.fin_score = torch.full((b, k), _NEG, device=device)
        self.fin_len = torch.zeros((b, k), dtype=torch.long, device=device)
        self.fin = torch.zeros((b, k), dtype=torch.bool, device=device)
        self.open = torch.ones((b, 1), dtype=torch.bool, device=device)  # the best hypotheses may still change

    def keep(self, idx: torch.Tensor) -> None:
        for name in ("run_seq", "run_score", "fin_seq", "fin_score", "fin_len", "fin", "open"):
            setattr(self, name, getattr(self, name)[idx])

    def step(self, logp: torch.Tensor, cur: int, stop: Callable[[int], bool], last: bool,
             length_penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance one token; returns each new running beam's source beam ``[b, K]`` and which studies are done."""
        b, k = self.run_score.shape
        vocab = logp.shape[-1]
        acc = (logp.view(b, k, vocab) + self.run_score[:, :, None]).view(b, k * vocab)
        top_lp, top_idx = torch.topk(acc, 2 * k)
        src, tok = top_idx // vocab, top_idx % vocab
        cand = torch.take_along_dim(self.run_seq, src[:, :, None], dim=1)
        cand[:, :, cur] = tok
        hits = torch.tensor([[last or stop(t) for t in row] for row in tok.tolist()], device=logp.device)
        # the best K candidates that did not stop keep running
        run_lp = top_lp + hits.float() * _NEG
        nxt = torch.topk(run_lp, k).indices
        self.run_seq = torch.take_along_dim(cand, nxt[:, :, None], dim=1)
        self.run_score = torch.take_along_dim(run_lp, nxt, dim=1)
        # stopped candidates among the top K enter the finished set if they beat it (length-normalised)
        stopped = hits.clone()
        stopped[:, k:] = False
        norm = top_lp / ((cur + 1) ** length_penalty) + (~self.open).float() * _NEG + (~stopped).float() * _NEG
        scores = torch.cat([self.fin_score, norm], dim=1)
        best = torch.topk(scores, k).indices
        self.fin_score = torch.take_along_dim(scores, best, dim=1)
        self.fin_seq = torch.take_along_dim(torch.cat([self.fin_seq, cand], dim=1), best[:, :, None], dim=1)
        lens = torch.cat([self.fin_len, torch.full_like(norm, cur + 1, dtype=torch.long)], dim=1)
        self.fin_len = torch.take_along_dim(lens, best, dim=1)
        self.fin = torch.take_along_dim(torch.cat([self.fin, stopped], dim=1), best, dim=1)
        # transformers' heuristic for early_stopping=False: can the best running beam still win?
        best_running = self.run_score[:, :1] / ((cur + 1) ** length_penalty)
        worst = torch.where(self.fin, self.fin_score.min(dim=1, keepdim=True).values, torch.full_like(self.fin_score, _NEG))
        self.open = self.open & (best_running > worst).any(dim=-1, keepdim=True)
        done = ~self.open[:, 0] | hits.all(dim=-1) | last
        return torch.take_along_dim(src, nxt, dim=1), done

    def result(self, j: int, n: int, stop: Callable[[int], bool]) -> Decoded:
        out = Decoded()
        for i in range(n):
            ids = self.fin_seq[j, i, : int(self.fin_len[j, i])].tolist()
            if ids and stop(ids[-1]):
                ids = ids[:-1]  # as greedy CCD: the stop token is not part of the answer
            out.sequences.append(ids)
            out.scores.append(float(self.fin_score[j, i]))
        return out


def beam_search(streams: Streams, scorer: Scorer, logits: torch.Tensor, stop: Callable[[int], bool],
                max_new_tokens: int, num_beams: int, length_penalty: float, num_return_sequences: int) -> list[Decoded]:
    """CCD beam search over every study of the batch (``logits`` from the prefill, rows interleaved)."""
    k = num_beams
    n_studies = logits.shape[0] // 2
    dev = logits.device
    first = torch.arange(n_studies).repeat_interleave(k)
    streams.select(first)
    scorer.select(first.tolist())
    logits = logits.view(n_studies, 2, -1)[first.to(dev)].reshape(n_studies * k * 2, -1)
    beams = _Beams(n_studies, k, max_new_tokens, dev)
    active = list(range(n_studies))
    results: list[Decoded | None] = [None] * n_studies
    for cur in range(max_new_tokens):
        src, done = beams.step(scorer.beam_log_probs(logits), cur, stop, cur == max_new_tokens - 1, length_penalty)
        done_l = done.tolist()
        for j, d in enumerate(done_l):
            if d:
                results[active[j]] = beams.result(j, num_return_sequences, stop)
        keep = [j for j, d in enumerate(done_l) if not d]
        if not keep:
            break
        kt = torch.tensor(keep, device=dev)
        rows = (kt[:, None] * k + src[kt]).reshape(-1)
        beams.keep(kt)
        active = [active[j] for j in keep]
        streams.select(rows)
        scorer.select(rows.tolist())
        tokens = beams.run_seq[:, :, cur].reshape(-1)
        scorer.push(tokens.tolist())
        logits = streams.step(tokens)
    return [r if r is not None else Decoded() for r in results]
