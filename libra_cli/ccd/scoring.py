"""One CCD step on the next-token logits of both streams, exactly as the reference loop (spec section 4).

``soft = (1 - alpha) * log_softmax(original) + alpha * log_softmax(guided)``; the expert copy is
``soft`` plus the label bias, taken before any processor; repetition penalty, n-gram blocking and
the sampling warpers act on ``soft`` only; ``final = (1 - beta) * soft + beta * expert``.
The arithmetic is the reference's, operation for operation, so greedy picks the same token.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from libra_cli.requests import GenerationSettings


class NGramBlocker:
    """``NoRepeatNGramLogitsProcessor`` made incremental: prompt n-grams are indexed once per study.

    Bans, for each row, every token that would complete an n-gram already in its history (the
    original prompt, with 0 where the image was, plus the answer so far). The per-row part holds
    only n-grams that end in the answer; values are tuples, so a row copy (a beam fork) is cheap.
    """

    def __init__(self, n: int, histories: list[list[int]]) -> None:
        self.n = n
        self.prompt: list[dict[tuple[int, ...], tuple[int, ...]]] = [self._index(h) for h in histories]
        self.study = list(range(len(histories)))
        self.answer: list[dict[tuple[int, ...], tuple[int, ...]]] = [{} for _ in histories]
        self.tail: list[tuple[int, ...]] = [tuple(h[-(n - 1):]) if n > 1 else () for h in histories]
        self.length = [len(h) for h in histories]

    def _index(self, seq: list[int]) -> dict[tuple[int, ...], tuple[int, ...]]:
        out: dict[tuple[int, ...], tuple[int, ...]] = {}
        if self.n < 1:
            return out
        for i in range(len(seq) - self.n + 1):
            key = tuple(seq[i: i + self.n - 1])
            out[key] = out.get(key, ()) + (seq[i + self.n - 1],)
        return out

    def banned(self, row: int) -> tuple[int, ...]:
        if self.n < 1 or self.length[row] + 1 < self.n:
            return ()
        key = self.tail[row]
        return self.prompt[self.study[row]].get(key, ()) + self.answer[row].get(key, ())

    def push(self, row: int, token: int) -> None:
        """Append ``token`` to ``row``'s history."""
        if self.n < 1:
            return
        if self.length[row] + 1 >= self.n:
            key = self.tail[row]
            self.answer[row][key] = self.answer[row].get(key, ()) + (token,)
        if self.n > 1:
            self.tail[row] = (self.tail[row] + (token,))[-(self.n - 1):]
        self.length[row] += 1

    def select(self, rows: list[int]) -> None:
        """Keep / repeat / reorder rows (a beam step or finished studies leaving the batch)."""
        seen: set[int] = set()
        answer = []
        for r in rows:
            answer.append(self.answer[r] if r not in seen else dict(self.answer[r]))
            seen.add(r)
        self.answer = answer
        self.study = [self.study[r] for r in rows]
        self.tail = [self.tail[r] for r in rows]
        self.length = [self.length[r] for r in rows]

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        rows, toks = [], []
        for r in range(scores.shape[0]):
            for t in self.banned(r):
                rows.append(r)
                toks.append(t)
        if rows:
            scores[rows, toks] = -float("inf")
        return scores


class Scorer:
    """The per-step CCD arithmetic for the active rows; owns the rows' histories."""

    def __init__(self, settings: GenerationSettings, bias: torch.Tensor, histories: list[list[int]]) -> None:
        self.alpha, self.beta = settings.ccd.alpha, settings.ccd.beta
        self.bias = bias  # [studies, V] float32, on the logits' device
        self.rows = list(range(len(histories)))  # row -> study
        self.histories = [list(h) for h in histories]  # prompt (image -> 0) + answer, per row
        self.ngram = NGramBlocker(settings.ngram, histories)
        penalty = settings.repetition_penalty
        self.penalty = RepetitionPenaltyLogitsProcessor(penalty) if penalty else None
        warpers: list[Any] = []
        if settings.temperature and settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k and settings.top_k > 0:
            warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p is not None and settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))
        self.warpers = LogitsProcessorList(warpers)

    def _mix(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The soft guide and the expert copy (U:282-300)."""
        alpha = self.alpha
        lo = F.log_softmax(logits[0::2], dim=-1)
        lc = F.log_softmax(logits[1::2], dim=-1)
        soft = (1 - alpha) * lo + alpha * lc
        bias = self.bias[torch.tensor(self.rows, device=self.bias.device)]
        return soft, (soft.float() + bias).to(soft.dtype)

    def _process(self, scores: torch.Tensor) -> torch.Tensor:
        if self.penalty is not None:
            scores = self.penalty(self._history_tensor(scores.device), scores)
        return self.ngram.apply(scores)

    def final(self, logits: torch.Tensor) -> torch.Tensor:
        """Interleaved stream logits ``[2n, V]`` -> the CCD scores ``[n, V]`` the next token is chosen from."""
        beta = self.beta
        soft, expert = self._mix(logits)
        soft = self._process(soft)
        if self.warpers:
            soft = self.warpers(self._history_tensor(soft.device), soft)
        return (1 - beta) * soft + beta * expert

    def beam_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Beam search (an extension): log-softmax of the CCD mixture, then the processors, as ``generate`` does.

        With alpha = beta = 0 this is ordinary beam search with n-gram blocking.
        """
        beta = self.beta
        soft, expert = self._mix(logits)
        mixed = (1 - beta) * soft + beta * expert
        return self._process(F.log_softmax(mixed.float(), dim=-1))

    def _history_tensor(self, device: torch.device) -> torch.Tensor:
        """Histories as one tensor; short rows repeat their first token (a no-op for the penalty)."""
        width = max(len(h) for h in self.histories)
        return torch.tensor([h + [h[0]] * (width - len(h)) for h in self.histories], dtype=torch.long, device=device)

    def push(self, tokens: list[int]) -> None:
        """Append one token to every active row."""
        for r, t in enumerate(tokens):
            self.histories[r].append(t)
            self.ngram.push(r, t)

    def select(self, rows: list[int]) -> None:
        self.rows = [self.rows[r] for r in rows]
        self.histories = [list(self.histories[r]) for r in rows]
        self.ngram.select(rows)


class StopRule:
    """The reference stops when a token's own text contains the stop string; EOS always stops too."""

    def __init__(self, tokenizer: Any, stop: str, eos_ids: list[int]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.eos = set(eos_ids)
        self._hit: dict[int, bool] = {}

    def __call__(self, token: int) -> bool:
        hit = self._hit.get(token)
        if hit is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            hit = token in self.eos or bool(self.stop and self.stop in text)
            self._hit[token] = hit
        return hit
