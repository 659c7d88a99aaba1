"""BLEU-1..4, ROUGE-L, METEOR and temporal entity F1: the published definitions, computed fast.

Each function equals what HF ``evaluate`` computed for the original Libra numbers (tests pin
equality with sacrebleu / rouge_score / nltk to 1e-9); the speed comes from doing shared work
once: one 13a tokenisation and one n-gram count for all four BLEU orders, a bit-parallel LCS for
ROUGE-L, and per-word caches of Porter stems and WordNet synonyms plus a per-sentence cache of
NLTK's word tokeniser for METEOR.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from libra_cli.metrics.text import clean_text

# --------------------------------------------------------------------------- BLEU


@dataclass(frozen=True)
class BleuStats:
    """Per-pair sufficient statistics of corpus BLEU (order 1..4): sums over pairs give the corpus."""

    matches: np.ndarray  # (n, 4) clipped n-gram matches
    possible: np.ndarray  # (n, 4) hypothesis n-grams
    hyp_len: np.ndarray  # (n,)
    ref_len: np.ndarray  # (n,)


def _tokenizer_13a() -> Any:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def bleu_stats(references: Sequence[str], predictions: Sequence[str], max_order: int = 4) -> BleuStats:
    """Tokenise once with sacrebleu's 13a tokeniser (the one evaluate copies) and count n-grams once."""
    tok = _tokenizer_13a()
    n = len(references)
    matches = np.zeros((n, max_order), dtype=np.int64)
    possible = np.zeros((n, max_order), dtype=np.int64)
    hyp_len = np.zeros(n, dtype=np.int64)
    ref_len = np.zeros(n, dtype=np.int64)
    for i, (ref, hyp) in enumerate(zip(references, predictions, strict=False)):
        r = tok(ref).split()
        h = tok(hyp).split()
        hyp_len[i] = len(h)
        ref_len[i] = len(r)
        for k in range(1, max_order + 1):
            if len(h) < k:
                break
            hc = Counter(zip(*(h[j:] for j in range(k)), strict=False)) if k > 1 else Counter(h)
            possible[i, k - 1] = len(h) - k + 1
            if len(r) < k:
                continue
            rc = Counter(zip(*(r[j:] for j in range(k)), strict=False)) if k > 1 else Counter(r)
            matches[i, k - 1] = sum(min(c, rc[g]) for g, c in hc.items() if g in rc)
    return BleuStats(matches, possible, hyp_len, ref_len)


def bleu_from_totals(matches: Sequence[float], possible: Sequence[float], hyp_len: float, ref_len: float, order: int) -> float:
    """Corpus BLEU of ``order`` from summed statistics: evaluate's (tensorflow/nmt) formula, no smoothing."""
    precisions = [matches[k] / possible[k] if possible[k] > 0 else 0.0 for k in range(order)]
    if min(precisions) <= 0:
        return 0.0
    geo_mean = math.exp(sum((1.0 / order) * math.log(p) for p in precisions))
    if ref_len <= 0 or hyp_len <= 0:
        return 0.0  # evaluate divides by zero here
    ratio = hyp_len / ref_len
    bp = 1.0 if ratio > 1.0 else math.exp(1 - 1.0 / ratio)
    return geo_mean * bp


def corpus_bleu(stats: BleuStats, orders: Sequence[int] = (1, 2, 3, 4)) -> dict[int, float]:
    """BLEU-n for each requested order, in [0, 1]."""
    m = stats.matches.sum(axis=0).tolist()
    p = stats.possible.sum(axis=0).tolist()
    h, r = int(stats.hyp_len.sum()), int(stats.ref_len.sum())
    return {k: bleu_from_totals(m, p, h, r, k) for k in orders}


# --------------------------------------------------------------------------- ROUGE-L

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokeniser without stemming: lowercase, non ``[a-z0-9]`` -> space, split."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence, bit-parallel (Hyyrö 2004): O(len(b)) big-int steps."""
    if not a or not b:
        return 0
    masks: dict[Any, int] = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(reference: str, prediction: str) -> tuple[float, float, float]:
    """ROUGE-L (precision, recall, F) of one pair, as ``RougeScorer(["rougeL"]).score(ref, pred)``."""
    t = rouge_tokens(reference)
    p = rouge_tokens(prediction)
    if not t or not p:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(t, p)
    precision = lcs / len(p)
    recall = lcs / len(t)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


def rouge_bootstrap_median(f_scores: Sequence[float], seed: int, n_samples: int = 1000) -> float:
    """evaluate's ROUGE-L: rouge_score's BootstrapAggregator median under ``np.random.seed(seed)``.

    evaluate aggregates rouge1, rouge2, rougeL, rougeLsum in that order from one global seed, so
    the draws for rouge1 and rouge2 are consumed first; their scores do not affect rougeL's.
    """
    f = np.asarray(f_scores, dtype=np.float64)
    n = len(f)
    rs = np.random.RandomState(seed)
    for _ in range(2):  # rouge1, rouge2
        rs.randint(0, n, size=(n_samples, n))
    idx = rs.randint(0, n, size=(n_samples, n))
    return float(np.percentile(f[idx].mean(axis=1), 50))


# --------------------------------------------------------------------------- temporal entity F1

TEMPORAL_KEYWORDS: frozenset[str] = frozenset(
    """bigger change cleared constant decrease decreased decreasing elevated elevation enlarged enlargement
    enlarging expanded greater growing improved improvement improving increase increased increasing larger new
    persistence persistent persisting progression progressive reduced removal resolution resolved resolving
    smaller stability stable stably unchanged unfolded worse worsen worsened worsening unaltered""".split()
)
_TEMPORAL_RE = re.compile(r"\b(" + "|".join(sorted(TEMPORAL_KEYWORDS, key=lambda w: (-len(w), w))) + r")\b")
EPSILON = 1e-10


def temporal_entities(text: str) -> set[str]:
    """Temporal keywords present as whole words (after the original's second, idempotent cleaning)."""
    return set(_TEMPORAL_RE.findall(clean_text(text)))


def temporal_f1_pair(ref_entities: set[str], pred_entities: set[str], eps: float = EPSILON) -> float:
    """The original per-pair definition, epsilon included (an empty reference set is special)."""
    if not ref_entities:
        return 1.0 if not pred_entities else eps
    tp = len(ref_entities & pred_entities)
    precision = (tp + eps) / (len(pred_entities) + eps)
    recall = (tp + eps) / (len(ref_entities) + eps)
    return 2 * precision * recall / (precision + recall + eps)


def temporal_f1_score(references: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """Same return shape as the original ``temporal_f1_score``: mean ``f1`` plus the entity sets."""
    ref_sets = [temporal_entities(r) for r in references]
    pred_sets = [temporal_entities(p) for p in predictions]
    scores = [temporal_f1_pair(r, p) for r, p in zip(ref_sets, pred_sets, strict=False)]
    return {
        "f1": float(np.mean(scores)) if scores else 0.0,
        "scores": scores,
        "prediction_entities": pred_sets,
        "reference_entities": ref_sets,
    }


# --------------------------------------------------------------------------- METEOR


class Meteor:
    """NLTK's ``single_meteor_score`` on ``word_tokenize`` output (as evaluate calls it), with caches.

    Identical matching stages (exact, Porter stem, WordNet synonym; each matching hypothesis words
    right-to-left to the last free reference position), chunk count and formula; only stems,
    synonym sets and tokenised sentences are memoised, and WordNet is loaded without the
    multilingual mapping NLTK 3.10 builds on load (about 4 s, unused for English).
    """

    def __init__(self, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> None:
        from libra_cli.metrics.nltk_data import require_nltk_data

        require_nltk_data()
        from nltk.stem.porter import PorterStemmer
        from nltk.tokenize import NLTKWordTokenizer, _get_punkt_tokenizer

        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self._punkt = _get_punkt_tokenizer("english")
        self._stemmer = PorterStemmer()
        self._wordnet: Any = None
        self._stems: dict[str, str] = {}
        self._syns: dict[str, frozenset[str]] = {}
        self._sent_cache: dict[str, list[str]] = {}
        self._word_tok = NLTKWordTokenizer()
        self._steps = self._compile_steps()

    def _compile_steps(self) -> list[tuple[Any, str]]:
        """NLTK's word-tokeniser regex steps, unwrapped from NLTK's per-call timeout guard (same engine)."""
        t = self._word_tok

        def raw(p: Any) -> Any:
            return getattr(p, "_rx", p)

        steps: list[tuple[Any, str]] = []
        steps += [(raw(p), s) for p, s in t.STARTING_QUOTES]
        steps += [(raw(p), s) for p, s in t.PUNCTUATION]
        steps.append((raw(t.PARENS_BRACKETS[0]), t.PARENS_BRACKETS[1]))
        steps.append((raw(t.DOUBLE_DASHES[0]), t.DOUBLE_DASHES[1]))
        self._n_before_pad = len(steps)
        steps += [(raw(p), s) for p, s in t.ENDING_QUOTES]
        steps += [(raw(p), r" \1 \2 ") for p in t.CONTRACTIONS2]
        steps += [(raw(p), r" \1 \2 ") for p in t.CONTRACTIONS3]
        return steps

    def _tokenize_sentence(self, sent: str) -> list[str]:
        cached = self._sent_cache.get(sent)
        if cached is not None:
            return cached
        text = sent
        for i, (pattern, repl) in enumerate(self._steps):
            if i == self._n_before_pad:
                text = " " + text + " "
            text = pattern.sub(repl, text)
        tokens = text.split()
        self._sent_cache[sent] = tokens
        return tokens

    def tokenize(self, text: str) -> list[str]:
        """``nltk.word_tokenize(text)``: punkt sentences, then the treebank-style word tokeniser."""
        out: list[str] = []
        for sent in self._punkt.tokenize(text):
            out.extend(self._tokenize_sentence(sent))
        return out

    @property
    def wordnet(self) -> Any:
        """WordNet 3.0 reader (NLTK's), loaded once per process on first use."""
        if self._wordnet is None:
            self._wordnet = load_wordnet()
        return self._wordnet

    def _stem(self, word: str) -> str:
        s = self._stems.get(word)
        if s is None:
            s = self._stems[word] = self._stemmer.stem(word)
        return s

    def _synonyms(self, word: str) -> frozenset[str]:
        s = self._syns.get(word)
        if s is None:
            names = {
                lemma.name()
                for synset in self.wordnet.synsets(word)
                for lemma in synset.lemmas()
                if lemma.name().find("_") < 0
            }
            names.add(word)
            s = self._syns[word] = frozenset(names)
        return s

    @staticmethod
    def _match(hyp: list[tuple[int, str]], ref: list[tuple[int, str]], matches: list[tuple[int, int]]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        positions: dict[str, list[int]] = {}
        for j, (_, w) in enumerate(ref):
            positions.setdefault(w, []).append(j)
        used_h: set[int] = set()
        used_r: set[int] = set()
        for i in range(len(hyp) - 1, -1, -1):
            pos = positions.get(hyp[i][1])
            if pos:
                j = pos.pop()
                used_h.add(i)
                used_r.add(j)
                matches.append((hyp[i][0], ref[j][0]))
        return [p for i, p in enumerate(hyp) if i not in used_h], [p for j, p in enumerate(ref) if j not in used_r]

    def _align(self, hyp_words: list[str], ref_words: list[str]) -> list[tuple[int, int]]:
        matches: list[tuple[int, int]] = []
        hyp = list(enumerate(hyp_words))
        ref = list(enumerate(ref_words))
        hyp, ref = self._match(hyp, ref, matches)  # exact
        if hyp and ref:
            hs = [(i, self._stem(w)) for i, w in hyp]
            rs = [(j, self._stem(w)) for j, w in ref]
            hs, rs = self._match(hs, rs, matches)  # stems; unmatched keep their stemmed form, as in NLTK
            hyp, ref = hs, rs
        if hyp and ref:  # WordNet synonyms of each hypothesis word, right to left, to the last free ref slot
            positions: dict[str, list[int]] = {}
            for j, (_, w) in enumerate(ref):
                positions.setdefault(w, []).append(j)
            for i in range(len(hyp) - 1, -1, -1):
                best_j, best_word = -1, None
                for syn in self._synonyms(hyp[i][1]):
                    pos = positions.get(syn)
                    if pos and pos[-1] > best_j:
                        best_j, best_word = pos[-1], syn
                if best_word is not None:
                    positions[best_word].pop()
                    matches.append((hyp[i][0], ref[best_j][0]))
        matches.sort(key=lambda m: m[0])
        return matches

    def score_tokens(self, ref_tokens: list[str], hyp_tokens: list[str]) -> float:
        """``single_meteor_score(ref_tokens, hyp_tokens)`` with NLTK's defaults (lowercased words)."""
        hyp_words = [w.lower() for w in hyp_tokens]
        ref_words = [w.lower() for w in ref_tokens]
        if not hyp_words or not ref_words:
            return 0.0
        matches = self._align(hyp_words, ref_words)
        m = len(matches)
        if m == 0:
            return 0.0
        precision = float(m) / len(hyp_words)
        recall = float(m) / len(ref_words)
        fmean = (precision * recall) / (self.alpha * precision + (1 - self.alpha) * recall)
        chunks = 1
        for a, b in zip(matches, matches[1:], strict=False):
            if not (b[0] == a[0] + 1 and b[1] == a[1] + 1):
                chunks += 1
        frag = float(chunks) / m
        return (1 - self.gamma * frag**self.beta) * fmean

    def score(self, reference: str, prediction: str) -> float:
        """METEOR of one pair of strings."""
        return self.score_tokens(self.tokenize(reference), self.tokenize(prediction))


_WORDNET: Any = None


def load_wordnet() -> Any:
    """NLTK's WordNetCorpusReader for ``corpora/wordnet``, loaded ~4x faster than ``nltk.corpus.wordnet``.

    Two changes, neither touching English synset lookup: the index/exception files are read with
    plain file objects during the constructor's sequential scans (NLTK's seekable reader is slow),
    and the WordNet->OMW version map (``map_wn``, only used by multilingual functions) is skipped.
    """
    global _WORDNET
    if _WORDNET is not None:
        return _WORDNET
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _FastLoadWordNet(WordNetCorpusReader):  # type: ignore[misc]
        _plain_open = True

        def open(self, file: str) -> Any:  # noqa: A003 - NLTK's name
            if self._plain_open and (file.startswith("index.") or file.endswith(".exc") or file == "lexnames"):
                return open(os.path.join(str(self._root), file), encoding="utf8")
            return super().open(file)

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    root = nltk.data.find("corpora/wordnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reader = _FastLoadWordNet(root, None)
    reader._plain_open = False
    _WORDNET = reader
    return reader


_FORKED: Meteor | None = None  # the scorer a forked worker inherits (set just before the pool starts)


def _reopen_wordnet() -> None:
    """Pool initializer: a forked worker must not share WordNet's open data files (and their seek
    positions) with its siblings; NLTK reopens them on demand when its file map is empty."""
    assert _FORKED is not None
    if _FORKED._wordnet is not None and hasattr(_FORKED._wordnet, "_data_file_map"):
        _FORKED._wordnet._data_file_map = {}


def _meteor_chunk(pairs: list[tuple[str, str]]) -> list[float]:
    assert _FORKED is not None
    return [_FORKED.score(r, p) for r, p in pairs]


def meteor_workers(n_pairs: int, workers: int | None) -> int:
    """Processes for METEOR: ``workers`` if given, else every core for large inputs when forking is safe
    (no torch loaded: forking after its thread pools start can hang)."""
    import sys

    if workers is not None:
        return max(1, workers)
    if n_pairs < 400 or "torch" in sys.modules or not hasattr(os, "fork"):
        return 1
    return min(os.cpu_count() or 1, 8)


def meteor_scores(references: Sequence[str], predictions: Sequence[str], meteor: Meteor | None = None,
                  workers: int | None = None) -> list[float]:
    """Per-pair METEOR (evaluate reports their mean); several forked processes for large inputs.

    WordNet is loaded before forking, so every worker shares the one copy (copy-on-write) and the
    parent's caches; results are the same as one process (each pair is scored independently).
    """
    global _FORKED
    m = meteor or Meteor()
    pairs = list(zip(references, predictions, strict=False))
    procs = meteor_workers(len(pairs), workers)
    if procs <= 1:
        return [m.score(r, p) for r, p in pairs]
    import multiprocessing

    m.wordnet  # noqa: B018 - load once in the parent, shared by the forked workers
    size = -(-len(pairs) // (procs * 4))
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    _FORKED = m
    try:
        with multiprocessing.get_context("fork").Pool(procs, initializer=_reopen_wordnet) as pool:
            parts = pool.map(_meteor_chunk, chunks)
    finally:
        _FORKED = None
    return [x for part in parts for x in part]
