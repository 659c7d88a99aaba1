"""Model-based metrics (optional extra ``metrics-model``): BERTScore, RadGraph F1, CheXbert F1.

Each loads its model from a local path or a cache; when the package or the files are missing
it raises an :class:`InputError` saying what is needed and how to get it, instead of a traceback
from deep inside a download.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError

BERTSCORE_MODEL = "distilbert-base-uncased"
BERTSCORE_LAYERS = 5  # bert-score's default layer for distilbert-base-uncased
BERTSCORE_FILES = "config.json, vocab.txt, tokenizer_config.json and model.safetensors (or pytorch_model.bin)"
INSTALL_HINTS = {
    "bert_score": "pip install bert-score (part of the metrics-model extra)",
    "radgraph": "pip install radgraph requests (part of the metrics-model extra)",
    "f1chexbert": "pip install f1chexbert",
}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _import(module: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(f"{what} needs the `{module}` package, which is not installed ({exc}); run: {INSTALL_HINTS.get(module, 'pip install ' + module)}") from exc


def resolve_bertscore_model(model: str | None) -> tuple[str, bool]:
    """(path or hub id, is_local). A local folder wins; a hub id must already be cached when offline."""
    name = model or BERTSCORE_MODEL
    if Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder} has no config.json; a BERTScore model folder needs {BERTSCORE_FILES}")
        return str(folder), True
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(name, local_files_only=True)
        return path, True
    except Exception:  # noqa: BLE001 - any miss means "not cached"
        if _offline():
            raise InputError(
                f"BERTScore needs the model {name!r} ({BERTSCORE_FILES}) and it is not in the Hugging Face cache "
                f"while offline; on a machine with network run `hf download {name}` (or copy that folder here) "
                "and pass --bertscore-model FOLDER"
            ) from None
        return name, False


def bertscore_f1(
    references: Sequence[str], predictions: Sequence[str], model: str | None = None, num_layers: int | None = None,
    batch_size: int = 64, device: str | None = None,
) -> list[float]:
    """Per-pair BERTScore F1 as evaluate's ``bertscore`` (distilbert-base-uncased, no rescaling, no idf)."""
    bert_score = _import("bert_score", "BERTScore")
    path, _ = resolve_bertscore_model(model)
    layers = num_layers or BERTSCORE_LAYERS
    try:
        scorer = bert_score.BERTScorer(
            model_type=path, num_layers=layers, batch_size=batch_size, device=device,
            rescale_with_baseline=False, idf=False, use_fast_tokenizer=False,
        )
        _, _, f1 = scorer.score(list(predictions), list(references), batch_size=batch_size)
    except OSError as exc:
        raise InputError(
            f"BERTScore could not load {path!r} ({exc}); it needs {BERTSCORE_FILES}: download them once with "
            f"`hf download {BERTSCORE_MODEL}` or pass --bertscore-model FOLDER"
        ) from exc
    return [float(x) for x in f1.tolist()]


def radgraph_scores(
    references: Sequence[str], predictions: Sequence[str], model_type: str | None = None
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """RadGraph rewards at level ``all``: means and per-pair lists of RG_E, RG_ER, RG_ER_bar."""
    radgraph = _import("radgraph", "RadGraph F1")
    kwargs: dict[str, Any] = {"reward_level": "all"}
    if model_type:
        kwargs["model_type"] = model_type
    try:
        scorer = radgraph.F1RadGraph(**kwargs)
        mean_reward, reward_list, _, _ = scorer(refs=list(references), hyps=list(predictions))
    except (OSError, ConnectionError, ImportError) as exc:
        raise InputError(
            "RadGraph F1 needs its model archive (<model_type>.tar.gz from the hub repository "
            "StanfordAIMI/RRG_scorers, cached in ~/.cache/radgraph/) plus a BERT tokenizer/config; "
            f"it could not load them ({type(exc).__name__}: {exc}); run once with network access, "
            "e.g. `python -c \"from radgraph import F1RadGraph; F1RadGraph(reward_level='all')\"`"
        ) from exc
    names = ("RG_E", "RG_ER", "RG_ER_bar")
    means = {n: float(v) for n, v in zip(names, mean_reward, strict=False)}
    per = {n: [float(x) for x in v] for n, v in zip(names, reward_list, strict=False)}
    return means, per


def chexbert_f1(references: Sequence[str], predictions: Sequence[str], device: str = "cpu") -> dict[str, float]:
    """CheXbert label F1 (``f1chexbert`` package): micro F1 over the 5 common and all 14 observations."""
    f1chexbert = _import("f1chexbert", "CheXbert F1")
    try:
        scorer = f1chexbert.F1CheXbert(device=device)
        _, _, report14, report5 = scorer(hyps=list(predictions), refs=list(references))
    except (OSError, ConnectionError) as exc:
        raise InputError(
            "CheXbert F1 needs the chexbert.pth checkpoint and a bert-base-uncased tokenizer in the cache; "
            f"it could not load them ({type(exc).__name__}: {exc}); run once with network access"
        ) from exc
    return {
        "CheXbert_F1": float(report5["micro avg"]["f1-score"]),
        "CheXbert_F1_14": float(report14["micro avg"]["f1-score"]),
    }
