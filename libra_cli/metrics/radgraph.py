"""RadGraph through the ``radgraph`` package (0.1.18), fixed for transformers 5 in a thin adapter.

What the adapter changes, and nothing else:

- transformers 5 removed ``encode_plus``; radgraph's vendored AllenNLP tokenizer calls it. The
  tokenizer radgraph gets is given an ``encode_plus`` that is ``__call__`` (what ``encode_plus``
  always delegated to in transformers 4).
- ``RadGraph.__init__`` prints "Using device" on stdout: it never reaches stdout (stdout is data; --verbose shows it on stderr).
- A whitespace-only report crashes the package (``ListFields must contain a single field type``):
  it is scored as an empty report (reward 0), which the package already does for ``""``.
- Annotations are computed once per distinct text and shared by every reward that needs them
  (RG_E/RG_ER/RG_ER_bar via ``radgraph.rewards.compute_reward``, the ReXrank "RadGraph" entity +
  relation F1 used by RadCliQ-v1), and can be cached by text hash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from libra_cli.console import package_prints
from libra_cli.metrics.compat import with_encode_plus

MODEL_TYPES: tuple[str, ...] = ("radgraph", "radgraph-xl", "modern-radgraph-xl")
DEFAULT_MODEL_TYPE = "radgraph-xl"  # the package's default (F1RadGraph(model_type=None))
_PATCHED = False


def radgraph_modules() -> SimpleNamespace:
    """Import the radgraph package (quietly) with the transformers-5 tokenizer fix applied once."""
    global _PATCHED
    with package_prints():
        import radgraph
        from radgraph.allennlp.common import cached_transformers
        from radgraph.allennlp.data import Vocabulary, token_indexers
        from radgraph.allennlp.modules import text_field_embedders, token_embedders
        from radgraph.dygie.models import dygie
        from radgraph.rewards import compute_reward
    if not _PATCHED:
        original: Callable[..., Any] = cached_transformers.get_tokenizer

        def get_tokenizer(model_name: str, **kwargs: Any) -> Any:
            return with_encode_plus(original(model_name, **kwargs))

        cached_transformers.get_tokenizer = get_tokenizer
        _PATCHED = True

    def build_model(config: dict[str, Any], vocab: Any, bert: str) -> Any:
        """DyGIE exactly as ``RadGraph.__init__`` builds it (used to write tiny test archives)."""
        embedder = text_field_embedders.BasicTextFieldEmbedder(
            {"bert": token_embedders.PretrainedTransformerMismatchedEmbedder(model_name=bert, max_length=512)}
        )
        model_kw = {k: v for k, v in config["model"].items() if k not in ("type", "embedder", "initializer", "module_initializer")}
        return dygie.DyGIE(vocab=vocab, embedder=embedder, **model_kw)

    return SimpleNamespace(package=radgraph, Vocabulary=Vocabulary, token_indexers=token_indexers,
                           compute_reward=compute_reward, build_model=build_model, RadGraph=radgraph.RadGraph)


class RadGraphAnnotator:
    """One loaded RadGraph model: report text -> the package's annotation dict (entities, relations)."""

    def __init__(self, model_dir: Path, model_type: str, device: str = "cpu") -> None:
        """``model_dir`` is the extracted archive (config.json, vocabulary/, weights.th)."""
        import torch

        mods = radgraph_modules()
        cuda = -1 if device == "cpu" or not torch.cuda.is_available() else int(device.split(":")[1]) if ":" in device else 0
        # RadGraph reads <model_cache_dir>/<model_type>/; model_dir is exactly that folder
        with package_prints():
            self.model = mods.RadGraph(model_type=model_type, model_cache_dir=str(model_dir.parent), cuda=cuda)
        self.model_type = model_type

    def annotate(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Annotations of non-empty texts, in order (the package's own forward, batch of one report)."""
        if not texts:
            return []
        with package_prints():
            out = self.model(list(texts))
        empty = {"text": "", "entities": {}, "data_source": None, "data_split": "inference"}
        return [out.get(str(i), empty) for i in range(len(texts))]


def is_empty(text: str) -> bool:
    """Reports the package cannot parse: empty or whitespace-only (scored 0, as ``""`` already is)."""
    return not text.strip()


def rewards(hyp: dict[str, Any] | None, ref: dict[str, Any] | None) -> tuple[float, float, float]:
    """(RG_E, RG_ER, RG_ER_bar) of one pair: ``radgraph.rewards.compute_reward(..., "all")``; None = empty."""
    if hyp is None or ref is None:
        return 0.0, 0.0, 0.0
    compute_reward = radgraph_modules().compute_reward
    e, er, er_bar = compute_reward(hyp, ref, "all")
    return float(e), float(er), float(er_bar)


# ----------------------------------------------------------------- ReXrank / CXR-Report-Metric "RadGraph"


def _f1(test: set[Any], retrieved: set[Any]) -> float:
    """CXR-Report-Metric's ``compute_f1`` (precision/recall 0 when undefined)."""
    tp = len(test & retrieved)
    fp = len(retrieved) - tp
    fn = len(test) - tp
    precision = tp / (tp + fp) if tp + fp != 0 else 0
    recall = tp / (tp + fn) if tp + fn != 0 else 0
    return 2 * precision * recall / (precision + recall) if precision + recall != 0 else 0


def entities_relations(annotation: dict[str, Any] | None) -> tuple[set[Any], set[Any]]:
    """CXR-Report-Metric's ``parse_entity_relation`` for one report."""
    if annotation is None:
        return set(), set()
    ents = annotation.get("entities", {})
    entities = {(e["tokens"], e["label"]) for e in ents.values()}
    relations = set()
    for e in ents.values():
        for rel in e["relations"]:
            target = ents[rel[1]]
            relations.add(((e["tokens"], e["label"]), (target["tokens"], target["label"]), rel[0]))
    return entities, relations


def combined(hyp: dict[str, Any] | None, ref: dict[str, Any] | None) -> float:
    """ReXrank's RadGraph F1 (``radgraph_combined``): mean of entity F1 and relation F1."""
    ref_e, ref_r = entities_relations(ref)
    hyp_e, hyp_r = entities_relations(hyp)
    return float((_f1(ref_e, hyp_e) + _f1(ref_r, hyp_r)) / 2)
