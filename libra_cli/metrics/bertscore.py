"""BERTScore through ``bert-score`` (0.3.13): the original Libra setting and ReXrank's.

- ``original``: HF evaluate's ``bertscore`` as the Libra evaluation called it: distilbert-base-uncased,
  layer 5, F1, no baseline rescaling, no idf.
- ``rexrank``: CXR-Report-Metric's ``add_bertscore_col`` (ReXrank, RadCliQ-v1): distilroberta-base,
  layer 5, ``lang="en"``, rescaled with bert-score's shipped baseline for that model, no idf, runs of
  spaces squeezed first.

The model is read from a local folder (the hub cache snapshot), so the rescale baseline is passed
by path (bert-score would look it up by the hub name). transformers 5 tokenizers lack
``build_inputs_with_special_tokens``, which bert-score calls for an empty report: the adapter gives
the tokenizer object the transformers-4 method, and RoBERTa's ``encode(..., add_prefix_space=True)``
(ignored by transformers 5) its transformers-4 meaning (``libra_cli.metrics.compat``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BertScoreSetting:
    """One published BERTScore configuration."""

    hub_name: str
    num_layers: int
    rescale: bool
    squeeze_spaces: bool


SETTINGS: dict[str, BertScoreSetting] = {
    "original": BertScoreSetting("distilbert-base-uncased", 5, rescale=False, squeeze_spaces=False),
    "rexrank": BertScoreSetting("distilroberta-base", 5, rescale=True, squeeze_spaces=True),
}


def baseline_file(hub_name: str) -> Path:
    """bert-score's shipped rescale baseline for ``hub_name`` (English)."""
    import bert_score

    return Path(bert_score.__file__).parent / "rescale_baseline" / "en" / f"{hub_name}.tsv"


class BertScorer:
    """A loaded BERTScore model for one setting; ``f1(refs, hyps)`` -> per-pair F1."""

    def __init__(self, setting: str, model_dir: Path, device: str = "cpu", batch_size: int = 64,
                 num_layers: int | None = None) -> None:
        from bert_score import BERTScorer

        from libra_cli.metrics.compat import with_add_prefix_space, with_encode_plus

        self.setting = SETTINGS[setting]
        kwargs: dict[str, Any] = {"idf": False, "batch_size": batch_size, "device": device}
        if self.setting.rescale:
            kwargs.update(lang="en", rescale_with_baseline=True, baseline_path=str(baseline_file(self.setting.hub_name)))
        self.scorer = BERTScorer(model_type=str(model_dir), num_layers=num_layers or self.setting.num_layers, **kwargs)
        tok = with_encode_plus(self.scorer._tokenizer)
        if "roberta" in type(tok).__name__.lower() or "gpt2" in type(tok).__name__.lower():
            tok = with_add_prefix_space(tok)
        self.scorer._tokenizer = tok
        self.batch_size = batch_size

    def f1(self, references: Sequence[str], predictions: Sequence[str]) -> list[float]:
        """Per-pair F1 (rescaled for ``rexrank``)."""
        refs, hyps = list(references), list(predictions)
        if self.setting.squeeze_spaces:
            refs = [re.sub(r" +", " ", t) for t in refs]
            hyps = [re.sub(r" +", " ", t) for t in hyps]
        _, _, f1 = self.scorer.score(hyps, refs, batch_size=self.batch_size)
        return [float(x) for x in f1.tolist()]
