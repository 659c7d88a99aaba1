"""RaTEScore through the ``RaTEScore`` package (0.6.0), kept aligned to pairs.

``RaTEScore.compute_score`` runs NER over the sentences of all reports at once and zips the
per-report entity lists with the other side's; a report with no sentence (empty, ``"ok"``, ``"."``:
medspacy finds nothing of 3+ characters) contributes no list, so every later score belongs to the
wrong pair (one pair at a time it raises ``IndexError``). The adapter runs the package's own
``sentence_split``, ``run_ner``'s per-sentence labelling (its batch size is 1) with its ``post_process``,
``process_embedding``'s CLS vectors and ``compute`` per report, so each report keeps its own entities; a
report without a sentence has no entities and gets the package's value for that case (0.5), and is
listed as not scorable in the result. medspacy splits each report once (the package split twice), a
sentence seen before is not labelled again, and an entity seen before is not encoded again.

RaTE-NER is DeBERTa-v3: every layer of every forward projects the 512 relative-position embeddings
through its query and key projections, about three quarters of the FLOPs of labelling a 30-token
sentence. Those projections depend on the weights only, so :class:`RelativeProjectionMemo` computes
them once and returns the same tensor after (same op, same input: bitwise the same logits).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from libra_cli.console import package_prints

Entities = list[tuple[str, str]]


class RelativeProjectionMemo:
    """A DeBERTa ``query_proj``/``key_proj`` that remembers its output for the relative-position input.

    Only an input of the relative embeddings' shape is remembered, and it is reused only when the next
    such input is equal element for element, so any other input (a 512-token sentence) is computed.
    """

    def __init__(self, linear: Any, rows: int) -> None:
        self.linear, self.rows = linear, rows
        self._x: Any = None
        self._y: Any = None

    def __call__(self, x: Any) -> Any:
        import torch

        if x.dim() != 3 or x.shape[0] != 1 or x.shape[1] != self.rows:
            return self.linear(x)
        if self._x is None or self._x.shape != x.shape or not torch.equal(self._x, x):
            self._x, self._y = x.detach().clone(), self.linear(x).detach()
        return self._y


def memoize_relative_projections(model: Any) -> int:
    """Wrap the shared query/key projections of every DeBERTa attention layer; returns how many."""
    n = 0
    for module in model.modules():
        if not (hasattr(module, "disentangled_attention_bias") and getattr(module, "share_att_key", False)):
            continue
        rows = 2 * int(module.pos_ebd_size)
        for name in ("query_proj", "key_proj"):
            object.__setattr__(module, name, RelativeProjectionMemo(getattr(module, name), rows))
        n += 1
    return n


class RaTEScorer:
    """RaTE-NER + the synonym encoder, loaded once (the package's ``RaTEScore.__init__``)."""

    def __init__(self, ner_dir: Path, eval_dir: Path, device: str = "cpu", batch_size: int = 1) -> None:
        with package_prints():
            from RaTEScore import score as pkg_score
            from RaTEScore import scorer as pkg_scorer
            from RaTEScore import utils as pkg_utils
        self._score, self._utils = pkg_score, pkg_utils
        try:  # PyRuSH 1.0.13 logs every token at DEBUG through loguru (enabled on its import): only its records
            from loguru import logger

            logger.disable("PyRuSH")
        except ImportError:
            pass
        self._ner_cache: dict[str, Entities] = {}
        self._embed_cache: dict[tuple[str, ...], Any] = {}
        self.package = pkg_scorer.RaTEScore(bert_model=str(ner_dir), eval_model=str(eval_dir), use_gpu=False, batch_size=batch_size)
        if device != "cpu":
            import torch

            self.package.device = torch.device(device)
            self.package.model.to(self.package.device)
            self.package.eval_model.to(self.package.device)
        memoize_relative_projections(self.package.model)

    def sentences(self, text: str) -> list[str]:
        """The package's ``sentence_split`` of one report (medspacy; sentences of >= 1 word, >= 3 characters)."""
        with package_prints():  # PyRuSH 1.0.13 prints its tokens on stdout
            return list(self._utils.sentence_split([text])[0])

    def has_sentence(self, text: str) -> bool:
        """Whether medspacy finds a sentence the package keeps."""
        return bool(self.sentences(text))

    def sentence_entities(self, sentence: str) -> Entities:
        """``run_ner``'s loop body for one sentence at its batch size of 1: the model's labels, then the
        package's ``post_process`` on the sentence's tokens (what ``run_ner`` reads back for it)."""
        import torch

        p = self.package
        inputs = p.tokenizer([sentence], max_length=512, padding=True, truncation=True, return_tensors="pt").to(p.device)
        with torch.no_grad():
            labels = torch.argmax(p.model(**inputs).logits, dim=2)[0].tolist()
        ids = inputs["input_ids"][0]
        tokens = p.tokenizer.convert_ids_to_tokens(ids[: int((ids != p.tokenizer.pad_token_id).sum())])
        return [tuple(e) for e in self._utils.post_process(tokens, [p.idx2label[x] for x in labels], p.tokenizer)]  # type: ignore[misc]

    def entities(self, texts: Sequence[str]) -> list[Entities | None]:
        """Per report: its (entity, type) list, or None when it has no sentence (not scorable).

        ``run_ner`` labels every sentence alone (batch size 1) and joins a report's sentences; a sentence's
        entities therefore depend on the sentence only, and each distinct sentence is labelled once.
        """
        split = [self.sentences(t) for t in texts]
        for sent in dict.fromkeys(x for sents in split for x in sents):
            if sent not in self._ner_cache:
                self._ner_cache[sent] = self.sentence_entities(sent)
        return [[e for x in sents for e in self._ner_cache[x]] if sents else None for sents in split]

    def embeddings(self, entities: Entities) -> tuple[Any, list[str]]:
        """``process_embedding`` of one report's entities, once per distinct entity list.

        The package encodes a report's entities as one padded batch; the vectors depend on that batch
        (float rounding that can flip a top-1 match), so the batch is kept as the package makes it.
        """
        p = self.package
        names = tuple(name for name, _ in entities)
        if names not in self._embed_cache:
            self._embed_cache[names] = self._score.process_embedding(list(entities), p.eval_tokenizer, p.eval_model,
                                                                     p.device)[0]
        return self._embed_cache[names], [t for _, t in entities]

    def score_pair(self, ref: Entities | None, hyp: Entities | None) -> float:
        """The body of ``compute_score``'s loop for one pair."""
        p = self.package
        gt_embeds, gt_types = self.embeddings(ref or [])
        pred_embeds, pred_types = self.embeddings(hyp or [])
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
