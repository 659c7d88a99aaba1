"""CheXbert through the ``f1chexbert`` package (0.0.2): labels for F1CheXbert and CLS embeddings for
SembScore, each computed in the batches of its reference (a report's outputs move with its batch's padding).

The package's own pieces are used: ``bert_labeler`` (the model), ``tokenize`` (text cleaning,
512-token cut), the "rrg" label mapping of ``F1CheXbert.get_label`` and scikit-learn's
``classification_report`` exactly as ``F1CheXbert.forward`` calls it. The adapter fixes:

- transformers 5 has no ``encode_plus`` (``libra_cli.metrics.compat.with_encode_plus``);
- scikit-learn >= 1.6: ``forward`` unpacks ``_check_targets`` into 3 values (it returns 4) only to
  compute an accuracy libra does not report, so ``forward`` is not called;
- the checkpoint and ``bert-base-uncased`` are read from local paths (the package downloads both).

SembScore (CXR-Report-Metric, ReXrank) is the cosine of the same model's final-layer CLS vectors
(``bert_encoder(logits=False)`` in CXR-Report-Metric's ``encode.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from libra_cli.console import package_prints

TARGET_NAMES: tuple[str, ...] = (
    "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
    "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices", "No Finding",
)
TARGET_NAMES_5: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
INDEX_5 = np.where(np.isin(TARGET_NAMES, TARGET_NAMES_5))[0]


def rrg_labels(classes: Sequence[int]) -> list[int]:
    """``F1CheXbert.get_label(mode="rrg")``: blank/negative -> 0, positive/uncertain -> 1 (head 14: yes -> 1)."""
    v: list[Any] = []
    for c in classes:
        if c == 0:
            v.append("")
        if c == 3:
            v.append(1)
        if c == 2:
            v.append(0)
        if c == 1:
            v.append(1)
    return [1 if (isinstance(x, int) and x > 0) else 0 for x in v]


SEMB_BATCH = 18  # CXR-Report-Metric CheXbert/src/constants.py BATCH_SIZE: SembScore's vectors come in these batches


class CheXbertModel:
    """The CheXbert labeller, loaded once: ``labels`` for F1CheXbert, ``semb_vectors`` for SembScore."""

    def __init__(self, checkpoint: Path, bert_dir: Path, device: str = "cpu") -> None:
        import torch
        from transformers import BertTokenizer

        from libra_cli.metrics.compat import with_encode_plus

        with package_prints():
            from f1chexbert import f1chexbert as pkg
        self._pkg = pkg
        self.device = torch.device(device)
        self.tokenizer = with_encode_plus(BertTokenizer.from_pretrained(str(bert_dir)))
        self.model = pkg.bert_labeler(pretrain_path=str(bert_dir))
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model_state_dict"]
        self.model.load_state_dict({k.replace("module.", ""): v for k, v in state.items()}, strict=False)
        self.model = self.model.to(self.device).eval()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as the package's ``tokenize`` makes them (strip, newlines, whitespace runs, 512 cut)."""
        import pandas as pd

        return self._pkg.tokenize(pd.Series([t.strip() for t in texts], dtype=object), self.tokenizer)

    def forward(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """One batch, in the given order, padded to its longest report (padding masked, the package's
        ``generate_attention_masks``): labels [n,14] and CLS vectors [n,H]."""
        import torch

        lengths = [len(x) for x in ids]
        batch = torch.zeros(len(ids), max(lengths), dtype=torch.long)
        for row, x in enumerate(ids):
            batch[row, : lengths[row]] = torch.tensor(list(x))
        mask = self._pkg.generate_attention_masks(batch, lengths, self.device)
        with torch.inference_mode():
            cls = self.model.bert(batch.to(self.device), attention_mask=mask)[0][:, 0, :]
            heads = [head(cls).argmax(dim=1).cpu().numpy() for head in self.model.linear_heads]
        labels = np.array([rrg_labels([int(h[row]) for h in heads]) for row in range(len(ids))], dtype=np.int64)
        return labels.reshape(len(ids), len(TARGET_NAMES)), cls.float().cpu().numpy()

    def labels(self, texts: Sequence[str]) -> np.ndarray:
        """Labels [n,14] of each report on its own (f1chexbert's ``get_label``: a batch of one, no padding). A
        report's outputs move with the padding of its batch (float rounding, which a BERT can amplify: at real
        size with random weights 9 of 118 reports changed a label), so none is added."""
        out = np.zeros((len(texts), len(TARGET_NAMES)), dtype=np.int64)
        for i, x in enumerate(self.encode(texts)):
            out[i] = self.forward([x])[0][0]
        return out

    def semb_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """CLS vectors as CXR-Report-Metric's ``encode.label`` makes them for one file: in file order, in
        batches of :data:`SEMB_BATCH` padded to their longest report (its DataLoader and collate)."""
        ids = self.encode(texts)
        out = [self.forward(ids[i:i + SEMB_BATCH])[1] for i in range(0, len(ids), SEMB_BATCH)]
        return np.concatenate(out) if out else np.zeros((0, self.model.bert.config.hidden_size), dtype=np.float32)


def classification_reports(ref_labels: np.ndarray, hyp_labels: np.ndarray) -> tuple[dict[str, Any], dict[str, Any]]:
    """(14-class, 5-class) ``classification_report(..., output_dict=True)`` as ``F1CheXbert.forward`` calls them."""
    import warnings

    from sklearn.metrics import classification_report

    refs = [list(r) for r in ref_labels.tolist()]
    hyps = [list(h) for h in hyp_labels.tolist()]
    refs5 = [np.array(r)[INDEX_5] for r in refs]
    hyps5 = [np.array(h)[INDEX_5] for h in hyps]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cr = classification_report(refs, hyps, target_names=list(TARGET_NAMES), output_dict=True)
        cr5 = classification_report(refs5, hyps5, target_names=list(TARGET_NAMES_5), output_dict=True)
    return cr, cr5


def f1_from_counts(counts: np.ndarray, kind: str) -> np.ndarray:
    """micro/macro/weighted F1 from summed per-class (TP, FP, FN) counts, shape (rows, classes, 3), sklearn's rules
    (an undefined class F1 is 0), so bootstrap resamples recompute the corpus value exactly."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    if kind == "micro":
        tp, fp, fn = tp.sum(axis=-1), fp.sum(axis=-1), fn.sum(axis=-1)
        den = 2 * tp + fp + fn
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
    den = 2 * tp + fp + fn
    per_class = np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)
    if kind == "macro":
        return per_class.mean(axis=-1)
    support = tp + fn  # weighted: by each class's number of true labels
    total = support.sum(axis=-1)
    return np.where(total > 0, (per_class * support).sum(axis=-1) / np.where(total > 0, total, 1), 0.0)


def pair_counts(ref_labels: np.ndarray, hyp_labels: np.ndarray) -> np.ndarray:
    """Per pair, per class (TP, FP, FN): shape (n, classes, 3)."""
    r, h = ref_labels.astype(bool), hyp_labels.astype(bool)
    return np.stack([(r & h), (~r & h), (r & ~h)], axis=-1).astype(np.float64)


def example_f1(ref_labels: np.ndarray, hyp_labels: np.ndarray) -> np.ndarray:
    """Per-pair F1 of the label sets (sklearn's ``samples`` average; 0 where both sets are empty)."""
    r, h = ref_labels.astype(bool), hyp_labels.astype(bool)
    tp = (r & h).sum(axis=1)
    den = r.sum(axis=1) + h.sum(axis=1)
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)


def semb_scores(ref_embeds: np.ndarray, hyp_embeds: np.ndarray) -> np.ndarray:
    """CXR-Report-Metric's ``add_semb_col``: cosine of the two CLS vectors, per pair."""
    dot = (ref_embeds * hyp_embeds).sum(axis=1)
    return dot / (np.linalg.norm(ref_embeds, axis=1) * np.linalg.norm(hyp_embeds, axis=1))
