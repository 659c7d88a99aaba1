"""Tiny random scorer models in each scorer's own on-disk format, for offline equality tests.

The real scorer weights (RadGraph, CheXbert, BERTScore's distilroberta, RaTE-NER, BioLORD) cannot be
downloaded in CI; these builders write seeded random models with the same file layout, so the
field's reference packages and libra's adapters can be run side by side on them. Nothing here is
used to score real reports.
"""

from __future__ import annotations

import json
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RADGRAPH_ENTITY_LABELS = ("ANAT-DP", "OBS-DP", "OBS-U", "OBS-DA")
RADGRAPH_RELATION_LABELS = ("suggestive_of", "located_at", "modify")
RATE_TYPES = ("ABNORMALITY", "NON-ABNORMALITY", "DISEASE", "NON-DISEASE", "ANATOMY")

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789.,;:()-_/%'\"!?<>=+")


def _words(corpus: Iterable[str], limit: int) -> list[str]:
    """Most frequent lowercase alphabetic words of ``corpus`` (ties by first appearance)."""
    import re
    from collections import Counter

    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(re.findall(r"[a-z]+", text.lower()))
    return [w for w, _ in counts.most_common(limit) if len(w) > 1]


def wordpiece_vocab(corpus: Iterable[str], size: int = 400, pad_to: int | None = None,
                    special: Sequence[str] = tuple(_SPECIAL)) -> list[str]:
    """A WordPiece vocabulary: specials, single characters, ``##`` continuations, frequent words;
    ``pad_to``: filled with ``[unusedN]`` entries up to a real model's vocabulary size (30,522 for BERT)."""
    vocab = list(special) + _CHARS + ["##" + c for c in _CHARS if c.isalnum()]
    seen = set(vocab)
    for w in _words(corpus, size):
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    vocab += [f"[unused{i}]" for i in range(max(0, (pad_to or 0) - len(vocab)))]
    return vocab


def build_bert(
    out: Path, vocab: Sequence[str], seed: int, *, hidden: int = 32, layers: int = 2, heads: int = 2,
    id2label: dict[int, str] | None = None, max_position: int = 512, intermediate: int | None = None,
    arch: str = "bert", init_range: float = 0.02, classifier_scale: float = 1.0,
) -> Path:
    """A ``bert`` folder (config, vocab.txt, tokenizer_config, safetensors); token classifier if ``id2label``.

    Tiny by default; ``hidden=768, layers=12, heads=12, intermediate=3072`` is BERT-base. ``arch``:
    ``bert``, ``distilbert`` (distilbert-base-uncased's layout) or ``mpnet`` (BioLORD-2023-C's).
    ``init_range`` / ``classifier_scale`` make a tiny random model *decisive*: at BERT's 0.02 a tiny model gives
    nearly the same [CLS] vector for every input and label logits within 1e-4 of each other, so argmax and
    top-1 choices become float-rounding ties that flip between CPUs (what made RaTEScore's reference drift).
    """
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertModel

    if arch != "bert":
        return _build_bert_like(out, vocab, seed, arch, hidden, layers, heads, intermediate or hidden * 4, max_position)

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 512}), encoding="utf-8"
    )
    (out / "special_tokens_map.json").write_text(
        json.dumps({"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}),
        encoding="utf-8",
    )
    kw: dict[str, Any] = {}
    if id2label is not None:
        kw = {"id2label": {int(k): v for k, v in id2label.items()}, "label2id": {v: int(k) for k, v in id2label.items()}}
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate or hidden * 2, max_position_embeddings=max_position, initializer_range=init_range,
        **kw,
    )
    torch.manual_seed(seed)
    model = BertForTokenClassification(config) if id2label is not None else BertModel(config)
    model.eval()
    if id2label is not None and classifier_scale != 1.0:
        with torch.no_grad():
            model.classifier.weight.mul_(classifier_scale)
    model.save_pretrained(out)
    return out


def _build_bert_like(out: Path, vocab: Sequence[str], seed: int, arch: str, hidden: int, layers: int, heads: int,
                     intermediate: int, max_position: int) -> Path:
    """DistilBERT (WordPiece, ``[CLS]``) or MPNet (WordPiece with ``<s>``/``</s>`` specials) folders."""
    import torch
    import transformers as tf

    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    if arch == "distilbert":
        tok = {"do_lower_case": True, "tokenizer_class": "DistilBertTokenizer", "model_max_length": 512}
        model = tf.DistilBertModel(tf.DistilBertConfig(vocab_size=len(vocab), dim=hidden, n_layers=layers, n_heads=heads,
                                                       hidden_dim=intermediate, max_position_embeddings=max_position))
    elif arch == "mpnet":
        tok = {"do_lower_case": True, "tokenizer_class": "MPNetTokenizer", "model_max_length": 512,
               "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "[UNK]",
               "pad_token": "<pad>", "mask_token": "<mask>"}
        model = tf.MPNetModel(tf.MPNetConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                                             num_attention_heads=heads, intermediate_size=intermediate,
                                             max_position_embeddings=max_position + 2, pad_token_id=1, bos_token_id=0,
                                             eos_token_id=2))
    else:
        raise ValueError(f"unknown architecture {arch}")
    (out / "tokenizer_config.json").write_text(json.dumps(tok), encoding="utf-8")
    model.eval().save_pretrained(out)
    return out


MPNET_SPECIAL = ("<s>", "<pad>", "</s>", "<unk>", "[UNK]", "<mask>")


def build_deberta(out: Path, corpus: Sequence[str], seed: int, id2label: dict[int, str], *, hidden: int = 768,
                  layers: int = 12, heads: int = 12, intermediate: int = 3072, vocab_size: int = 128100) -> Path:
    """A DeBERTa-v3 token classifier as Angelakeke/RaTE-NER-Deberta ships it: ``spm.model`` (SentencePiece,
    trained on ``corpus``), ``tokenizer.json`` made from it, ``tokenizer_config.json``, config, safetensors.
    The embedding has ``vocab_size`` rows (128,100 for deberta-v3-base) whatever the SentencePiece size."""
    import io

    import sentencepiece as spm
    import torch
    import transformers as tf

    out.mkdir(parents=True, exist_ok=True)
    model_io = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(list(corpus)), model_writer=model_io, vocab_size=2000,
                                   model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                   pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
                                   user_defined_symbols=["[MASK]"], hard_vocab_limit=False, minloglevel=2)
    (out / "spm.model").write_bytes(model_io.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False, "vocab_type": "spm",
        "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]", "model_max_length": 512}), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
        "cls_token": "[CLS]", "mask_token": "[MASK]"}), encoding="utf-8")
    tf.DebertaV2TokenizerFast(vocab_file=str(out / "spm.model")).backend_tokenizer.save(str(out / "tokenizer.json"))
    config = tf.DebertaV2Config(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=512, relative_attention=True, position_buckets=256,
        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        max_relative_positions=-1, type_vocab_size=0, layer_norm_eps=1e-7,
        id2label={int(k): v for k, v in id2label.items()}, label2id={v: int(k) for k, v in id2label.items()})
    torch.manual_seed(seed)
    tf.DebertaV2ForTokenClassification(config).eval().save_pretrained(out)
    return out


def build_roberta(out: Path, corpus: Sequence[str], seed: int, *, hidden: int = 32, layers: int = 6, heads: int = 2,
                  intermediate: int | None = None, bpe_vocab: int = 600, vocab_size: int | None = None) -> Path:
    """A RoBERTa (byte-level BPE trained on ``corpus``), the layout of ``distilroberta-base`` (tiny by default;
    ``hidden=768, heads=12, intermediate=3072, vocab_size=50265``: distilroberta-base's size)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel

    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(corpus), vocab_size=bpe_vocab, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.save_model(str(out))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "RobertaTokenizer", "model_max_length": 512}), encoding="utf-8"
    )
    vocab_size = max(vocab_size or 0, len(json.loads((out / "vocab.json").read_text(encoding="utf-8"))))
    config = RobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate or hidden * 2, max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1,
    )
    torch.manual_seed(seed)
    RobertaModel(config, add_pooling_layer=False).eval().save_pretrained(out)
    return out


def build_chexbert(out_pth: Path, bert_dir: Path, seed: int) -> Path:
    """``chexbert.pth`` as f1chexbert loads it: ``{"model_state_dict": {"module.bert.*", "module.linear_heads.N.*"}}``."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(bert_dir)
    config.initializer_range = 0.5  # peaked attention: the CLS vector then differs between reports
    torch.manual_seed(seed)
    bert = BertModel(config)
    heads = torch.nn.ModuleList([torch.nn.Linear(config.hidden_size, 4) for _ in range(13)])
    heads.append(torch.nn.Linear(config.hidden_size, 2))
    # random heads with a wide spread, so that labels vary between reports
    for head in heads:
        torch.nn.init.normal_(head.weight, std=5.0)
    state = {f"module.bert.{k}": v for k, v in bert.state_dict().items()}
    state.update({f"module.linear_heads.{k}": v for k, v in heads.state_dict().items()})
    out_pth.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": state}, out_pth)
    return out_pth


def radgraph_config(bert_model: str, max_span_width: int = 4, feature_size: int = 8, hidden_dims: int = 16) -> dict[str, Any]:
    """The DyGIE config layout of the radgraph archives (``config.json``): tiny by default; the published
    archives use span width 8, feature size 20 and 150-wide feed-forward scorers."""
    return {
        "dataset_reader": {
            "type": "dygie", "max_span_width": max_span_width,
            "token_indexers": {"bert": {"type": "pretrained_transformer_mismatched", "model_name": bert_model, "max_length": 512}},
        },
        "model": {
            "type": "dygie",
            "embedder": {"token_embedders": {"bert": {"type": "pretrained_transformer_mismatched", "model_name": bert_model, "max_length": 512}}},
            "initializer": {"regexes": [["_span_width_embedding.weight", {"type": "xavier_normal"}]]},
            "module_initializer": {"regexes": [[".*weight", {"type": "xavier_normal"}], [".*weight_matrix", {"type": "xavier_normal"}]]},
            "loss_weights": {"ner": 1.0, "relation": 1.0, "coref": 0.0, "events": 0.0},
            "feature_size": feature_size, "max_span_width": max_span_width, "target_task": "relation",
            "feedforward_params": {"num_layers": 2, "hidden_dims": hidden_dims, "dropout": 0.4},
            "modules": {
                "coref": {"spans_per_word": 0.3, "max_antecedents": 100, "coref_prop": 0},
                "ner": {},
                "relation": {"spans_per_word": 0.5},
                "events": {"trigger_spans_per_word": 0.3, "argument_spans_per_word": 0.8,
                           "loss_weights": {"trigger": 0.2, "arguments": 1.0}},
            },
        },
    }


def build_radgraph_archive(out_tar: Path, bert_dir: Path, seed: int, model_type: str = "radgraph",
                           ner_bias: float = -2.5, relation_bias: float = -0.5, real_size: bool = False) -> Path:
    """``<model_type>.tar.gz`` as StanfordAIMI/RRG_scorers ships it: config.json, vocabulary/, weights.th.

    The DyGIE model is built with the radgraph package's own classes (so the state dict keys are
    exactly what ``RadGraph`` loads with ``strict=True``); the BERT backbone is ``bert_dir``.
    """
    import torch

    from libra_cli.metrics.radgraph import radgraph_modules

    mods = radgraph_modules()
    config = radgraph_config(str(bert_dir), *((8, 20, 150) if real_size else ()))
    vocab = mods.Vocabulary()
    ner_ns, rel_ns = f"{model_type}__ner_labels", f"{model_type}__relation_labels"
    vocab.add_token_to_namespace("", ner_ns)
    for label in RADGRAPH_ENTITY_LABELS:
        vocab.add_token_to_namespace(label, ner_ns)
    for label in RADGRAPH_RELATION_LABELS:
        vocab.add_token_to_namespace(label, rel_ns)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vocab.save_to_files(str(root / "vocabulary"))
        (root / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        torch.manual_seed(seed)
        model = mods.build_model(config, vocab, str(bert_dir))
        # shape the random scorers like a trained model's output: few spans become entities, some pairs relations
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("_ner._ner_scorers") and name.endswith(".1._module.weight"):
                    torch.nn.init.normal_(p, std=1.5)
                elif name.startswith("_ner._ner_scorers") and name.endswith(".1._module.bias"):
                    p.fill_(ner_bias)
                elif name.startswith("_relation._relation_scorers") and name.endswith("weight"):
                    torch.nn.init.normal_(p, std=1.5)
                elif name.startswith("_relation._relation_scorers") and name.endswith("bias"):
                    p.fill_(relation_bias)
        torch.save(model.state_dict(), root / "weights.th")
        out_tar.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out_tar, "w:gz") as tar:
            for item in ("config.json", "vocabulary", "weights.th"):
                tar.add(root / item, arcname=item)
    return out_tar


def rate_ner_labels() -> dict[int, str]:
    """RaTE-NER's BIO label set over its five entity types."""
    labels = ["O"] + [f"{p}-{t}" for t in RATE_TYPES for p in ("B", "I")]
    return dict(enumerate(labels))


def install_in_hf_cache(hub_dir: Path, repo_id: str, files: dict[str, Path], commit: str = "0" * 40) -> Path:
    """Lay ``files`` (name in repo -> local file) out as the Hugging Face hub cache does for ``repo_id``.

    ``hub_dir`` is ``$HF_HOME/hub``: ``models--org--name/{blobs,snapshots/<commit>,refs/main}``.
    Used to run the reference packages (which load hub ids such as ``bert-base-uncased``) and
    libra offline against the same tiny files, and to test the cache layout without a network.
    """
    import hashlib
    import shutil

    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            shutil.copyfile(src, blob)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        target.symlink_to(Path("../" * (len(Path(name).parts) + 1)) / "blobs" / blob.name)
    return snap


def folder_files(folder: Path) -> dict[str, Path]:
    """``{relative name: path}`` of every file in ``folder`` (for :func:`install_in_hf_cache`)."""
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def build_all(out: Path, real_size: bool = False) -> dict[str, Path]:
    """Every scorer model, from fixed seeds, plus hub-cache / radgraph-cache layouts of them.

    ``out/hf/hub`` holds the BERT as ``bert-base-uncased`` (f1chexbert's and CXR-Report-Metric's
    hub id), ``out/xdg/chexbert/chexbert.pth`` is f1chexbert's cache path, ``out/radgraph-cache/radgraph``
    the extracted archive. Same code and seeds give the same weights (tests rebuild what the
    committed reference outputs were computed on). ``real_size``: the published architectures with random
    weights (BERT-base for RadGraph and CheXbert, distilbert-base, distilroberta-base, DeBERTa-v3-base
    RaTE-NER with its SentencePiece tokenizer, MPNet-base BioLORD; ``radgraph-xl.tar.gz`` too), ~2.7 GB.
    """
    from tests.builders.reports import make_pairs

    refs, preds = make_pairs(300, seed=0)
    corpus = refs + preds
    if real_size:
        base = {"hidden": 768, "heads": 12, "intermediate": 3072}
        vocab = wordpiece_vocab(corpus, pad_to=30522)
        paths = {
            "bert": build_bert(out / "bert", vocab, seed=1, layers=12, **base),
            "distilbert": build_bert(out / "distilbert", vocab, seed=7, layers=6, arch="distilbert", **base),
            "roberta": build_roberta(out / "roberta", corpus, seed=3, layers=6, bpe_vocab=2000, vocab_size=50265, **base),
            "rate-ner": build_deberta(out / "rate-ner", corpus, seed=4, id2label=rate_ner_labels()),
            "rate-eval": build_bert(out / "rate-eval", wordpiece_vocab(corpus, pad_to=30527, special=MPNET_SPECIAL),
                                    seed=5, layers=12, arch="mpnet", **base),
        }
    else:
        vocab = wordpiece_vocab(corpus)
        paths = {
            "bert": build_bert(out / "bert", vocab, seed=1),
            "roberta": build_roberta(out / "roberta", corpus, seed=3),
            # RaTEScore's argmax (NER labels) and top-1 synonym match need margins far above float rounding
            "rate-ner": build_bert(out / "rate-ner", vocab, seed=4, id2label=rate_ner_labels(), init_range=0.5,
                                   classifier_scale=100.0),
            "rate-eval": build_bert(out / "rate-eval", vocab, seed=5, init_range=0.5),
        }
    paths["chexbert"] = build_chexbert(out / "xdg" / "chexbert" / "chexbert.pth", paths["bert"], seed=2)
    paths["radgraph_archive"] = build_radgraph_archive(out / "radgraph.tar.gz", paths["bert"], seed=6, real_size=real_size)
    extracted = out / "radgraph-cache" / "radgraph"
    extracted.mkdir(parents=True, exist_ok=True)
    with tarfile.open(paths["radgraph_archive"], "r:gz") as tar:
        tar.extractall(extracted, filter="data")
    paths["radgraph"] = extracted
    if real_size:
        paths["radgraph_xl_archive"] = build_radgraph_archive(out / "radgraph-xl.tar.gz", paths["bert"], seed=8,
                                                              model_type="radgraph-xl", real_size=True)
        extracted = out / "radgraph-cache" / "radgraph-xl"
        extracted.mkdir(parents=True, exist_ok=True)
        with tarfile.open(paths["radgraph_xl_archive"], "r:gz") as tar:
            tar.extractall(extracted, filter="data")
        paths["radgraph_xl"] = extracted
    paths["hf_hub"] = out / "hf" / "hub"
    install_in_hf_cache(paths["hf_hub"], "bert-base-uncased", folder_files(paths["bert"]))
    return paths


def install_scorer_hub(hub: Path, paths: dict[str, Path]) -> Path:
    """Lay the built scorer models out as the Hugging Face hub cache ``libra eval`` resolves them from."""
    archives = {"radgraph.tar.gz": paths["radgraph_archive"], "chexbert.pth": paths["chexbert"]}
    if "radgraph_xl_archive" in paths:
        archives["radgraph-xl.tar.gz"] = paths["radgraph_xl_archive"]
    install_in_hf_cache(hub, "StanfordAIMI/RRG_scorers", archives)
    for repo, key in (("bert-base-uncased", "bert"), ("distilbert-base-uncased", "distilbert" if "distilbert" in paths else "bert"),
                      ("distilroberta-base", "roberta"), ("Angelakeke/RaTE-NER-Deberta", "rate-ner"),
                      ("FremyCompany/BioLORD-2023-C", "rate-eval")):
        install_in_hf_cache(hub, repo, folder_files(paths[key]))
    return hub
