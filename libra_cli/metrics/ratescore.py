"""RaTEScore through the ``RaTEScore`` package (0.6.0), kept aligned to pairs.

``RaTEScore.compute_score`` runs NER over the sentences of all reports at once and zips the
per-report entity lists with the other side's; a report with no sentence (empty, ``"ok"``, ``"."``:
medspacy finds nothing of 3+ characters) contributes no list, so every later score belongs to the
wrong pair (one pair at a time it raises ``IndexError``). The adapter runs the package's own
``sentence_split``, ``run_ner``, ``process_embedding`` and ``compute`` per report, so each report
keeps its own entities; a report without a sentence has no entities and gets the package's value
for that case (0.5), and is listed as not scorable in the result.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Entities = list[tuple[str, str]]


class RaTEScorer:
    """RaTE-NER + the synonym encoder, loaded once (the package's ``RaTEScore.__init__``)."""

    def __init__(self, ner_dir: Path, eval_dir: Path, device: str = "cpu", batch_size: int = 1) -> None:
        with contextlib.redirect_stdout(sys.stderr):
            from RaTEScore import score as pkg_score
            from RaTEScore import scorer as pkg_scorer
            from RaTEScore import utils as pkg_utils
        self._score, self._utils = pkg_score, pkg_utils
        try:  # PyRuSH 1.0.13 logs every token at DEBUG through loguru (enabled on its import): only its records
            from loguru import logger

            logger.disable("PyRuSH")
        except ImportError:
            pass
        self.package = pkg_scorer.RaTEScore(bert_model=str(ner_dir), eval_model=str(eval_dir), use_gpu=False, batch_size=batch_size)
        if device != "cpu":
            import torch

            self.package.device = torch.device(device)
            self.package.model.to(self.package.device)
            self.package.eval_model.to(self.package.device)

    def has_sentence(self, text: str) -> bool:
        """Whether medspacy finds a sentence the package keeps (>= 1 word, >= 3 characters)."""
        with contextlib.redirect_stdout(sys.stderr):  # PyRuSH 1.0.13 prints its tokens on stdout
            return bool(self._utils.sentence_split([text])[0])

    def entities(self, texts: Sequence[str]) -> list[Entities | None]:
        """Per report: its (entity, type) list, or None when it has no sentence (not scorable)."""
        p = self.package
        keep = [i for i, t in enumerate(texts) if self.has_sentence(t)]
        out: list[Entities | None] = [None] * len(texts)
        if keep:
            with contextlib.redirect_stdout(sys.stderr):
                pairs = self._score.run_ner([texts[i] for i in keep], p.idx2label, p.tokenizer, p.model, p.device,
                                            p.batch_size)
            for i, ents in zip(keep, pairs, strict=True):
                out[i] = [tuple(e) for e in ents]  # type: ignore[misc]
        return out

    def score_pair(self, ref: Entities | None, hyp: Entities | None) -> float:
        """The body of ``compute_score``'s loop for one pair."""
        p = self.package
        gt_embeds, gt_types = self._score.process_embedding(ref or [], p.eval_tokenizer, p.eval_model, p.device)
        pred_embeds, pred_types = self._score.process_embedding(hyp or [], p.eval_tokenizer, p.eval_model, p.device)
        if len(gt_embeds) == 0 or len(pred_embeds) == 0:
            return 0.5
        precision = self._utils.compute(gt_embeds, pred_embeds, gt_types, pred_types, p.affinity_matrix)
        recall = self._utils.compute(pred_embeds, gt_embeds, pred_types, gt_types, p.affinity_matrix)
        if precision + recall == 0:
            return 0.0
        return float(2 * precision * recall / (precision + recall))

    def scores(self, references: Sequence[str], predictions: Sequence[str]) -> tuple[list[float], list[int]]:
        """Per-pair RaTEScore and the indices of pairs with a report that has no sentence."""
        ents = self.entities(list(references) + list(predictions))
        n = len(references)
        unscorable = [i for i in range(n) if ents[i] is None or ents[n + i] is None]
        return [self.score_pair(ents[i], ents[n + i]) for i in range(n)], unscorable


def to_jsonable(entities: Entities | None) -> Any:
    """Entities for the per-report cache (None stays None)."""
    return None if entities is None else [list(e) for e in entities]
