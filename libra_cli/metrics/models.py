"""Scorer models: where each model-based metric's weights come from, found offline, fetched once.

``libra eval`` never downloads: it resolves every model from the local Hugging Face cache
(``local_files_only``), so a missing model is a one-line error naming the download command at
once, never minutes of hub retries. ``libra eval download`` is the one step that needs a network.
RadGraph archives (``StanfordAIMI/RRG_scorers``) are extracted once into libra's cache with the
BERT backbone their config names pointed at its local snapshot.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from libra_cli.checkpoint.hub import cache_dir as hub_cache_dir
from libra_cli.errors import InputError


@dataclass(frozen=True)
class HubRepo:
    """Files of one hub repository (``patterns`` are fnmatch patterns; the first match of each group is required)."""

    repo_id: str
    patterns: tuple[str, ...]
    required: tuple[tuple[str, ...], ...]  # each group: at least one of these files must be present
    revision: str = "main"


@dataclass(frozen=True)
class ScorerModel:
    """A named scorer model: one or more hub repositories (RadGraph adds its backbone at download time)."""

    key: str
    description: str
    repos: tuple[HubRepo, ...]
    radgraph_type: str | None = None
    metrics: tuple[str, ...] = field(default=())


_BERT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
RRG_SCORERS = "StanfordAIMI/RRG_scorers"
# LLM judges (libra_cli.metrics.judges): config, tokenizer (+ chat template), generation config, weights
_JUDGE_FILES = ("*.json", "*.model", "*.txt", "*.jinja", "*.safetensors")
_JUDGE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _bert_like(repo_id: str, extra: tuple[str, ...] = ()) -> HubRepo:
    return HubRepo(repo_id, (*_BERT_FILES, *extra, *_WEIGHTS), (("config.json",), _WEIGHTS))


SCORER_MODELS: dict[str, ScorerModel] = {
    m.key: m
    for m in (
        ScorerModel("bertscore-original", "BERTScore as the original Libra evaluation (distilbert-base-uncased)",
                    (_bert_like("distilbert-base-uncased"),), metrics=("bertscore",)),
        ScorerModel("bertscore-rexrank", "BERTScore as ReXrank / RadCliQ (distilroberta-base)",
                    (_bert_like("distilroberta-base", ("vocab.json", "merges.txt")),), metrics=("bertscore_rexrank", "radcliq")),
        ScorerModel("chexbert", "CheXbert labeller (chexbert.pth) on bert-base-uncased",
                    (HubRepo(RRG_SCORERS, ("chexbert.pth",), (("chexbert.pth",),)),
                     HubRepo("bert-base-uncased", ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json"),
                             (("config.json",), ("vocab.txt",)))),
                    metrics=("chexbert", "semb", "radcliq")),
        *(
            ScorerModel(f"radgraph:{t}", f"RadGraph model '{t}' (DyGIE archive + its BERT backbone)",
                        (HubRepo(RRG_SCORERS, (f"{t}.tar.gz",), ((f"{t}.tar.gz",),)),), radgraph_type=t,
                        metrics=("radgraph", "radgraph_combined", "radcliq") if t == "radgraph" else ("radgraph",))
            for t in ("radgraph", "radgraph-xl", "modern-radgraph-xl")
        ),
        ScorerModel("ratescore", "RaTEScore: RaTE-NER (DeBERTa) + BioLORD-2023-C",
                    (HubRepo("Angelakeke/RaTE-NER-Deberta", ("*.json", "*.model", "*.txt", *_WEIGHTS), (("config.json",), _WEIGHTS)),
                     HubRepo("FremyCompany/BioLORD-2023-C", ("*.json", "*.txt", *_WEIGHTS), (("config.json",), _WEIGHTS))),
                    metrics=("ratescore",)),
        *(
            ScorerModel(key, description, (HubRepo(repo, _JUDGE_FILES, (("config.json",), ("tokenizer_config.json",),
                                                                          _JUDGE_WEIGHTS)),), metrics=(group,))
            for key, description, repo, group in (
                ("green", "GREEN judge GREEN-RadLlama2-7b (LLM; a GPU in practice)", "StanfordAIMI/GREEN-radllama2-7b", "green"),
                ("green:radphi2", "GREEN judge GREEN-RadPhi2 (2.7B LLM)", "StanfordAIMI/GREEN-RadPhi2", "green"),
                ("crimson", "CRIMSON judge MedGemmaCRIMSON (4B LLM)", "rajpurkarlab/medgemma-4b-it-crimson", "crimson"),
            )
        ),
    )
}


def libra_cache_dir() -> Path:
    """libra's own cache (extracted RadGraph archives, per-report model outputs)."""
    base = os.environ.get("LIBRA_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "libra")
    return Path(base).expanduser()


def download_command(keys: list[str]) -> str:
    """The command that fetches ``keys`` (by suite when that is shorter to say)."""
    return "libra eval download " + " ".join(f"--model {k}" for k in keys)


class MissingModel(InputError):
    """A scorer model that is not in the local cache."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"scorer model '{key}' is not in the local Hugging Face cache ({detail}); "
                         f"run `{download_command([key])}` once on a machine with network "
                         "(then copy the cache folder if this one has none), or pass a local folder")
        self.key = key


def snapshot(repo: HubRepo, cache_dir: Path) -> tuple[Path, str]:
    """(snapshot folder, commit) of ``repo`` in the hub cache, checking the required files; no network."""
    folder = cache_dir / ("models--" + repo.repo_id.replace("/", "--"))
    ref = folder / "refs" / repo.revision
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else repo.revision
    snap = folder / "snapshots" / commit
    if not snap.is_dir():
        raise FileNotFoundError(f"{repo.repo_id} not cached in {cache_dir}")
    for group in repo.required:
        if not any((snap / name).exists() for name in group):
            raise FileNotFoundError(f"{repo.repo_id} lacks {' or '.join(group)} in {snap}")
    return snap, commit


@dataclass
class ResolvedModel:
    """Local paths of one scorer model and the commits they came from (recorded with results)."""

    key: str
    paths: dict[str, Path]
    commits: dict[str, str]


def resolve(key: str, cache_dir: Path | None = None, overrides: dict[str, Path] | None = None) -> ResolvedModel:
    """Find ``key``'s files locally (no network): hub cache snapshots, or ``overrides`` (hub repo id ->
    local folder holding that repository's files). Raises :class:`MissingModel`."""
    spec = SCORER_MODELS[key]
    cache = cache_dir or hub_cache_dir()
    paths: dict[str, Path] = {}
    commits: dict[str, str] = {}
    for repo in spec.repos:
        local = (overrides or {}).get(repo.repo_id)
        if local is not None:
            if not local.is_dir():
                raise InputError(f"{local}: no such folder (given for {repo.repo_id}); check the path")
            paths[repo.repo_id], commits[repo.repo_id] = local, f"local:{local}"
            continue
        try:
            snap, commit = snapshot(repo, cache)
        except FileNotFoundError as exc:
            raise MissingModel(key, str(exc)) from None
        paths[repo.repo_id] = snap
        commits[repo.repo_id] = commit
    if spec.radgraph_type is not None:
        archive = paths[RRG_SCORERS] / f"{spec.radgraph_type}.tar.gz"
        if not archive.is_file():
            raise MissingModel(key, f"{archive} is missing")
        folder, backbone = extract_radgraph(archive, spec.radgraph_type, cache)
        paths["radgraph"] = folder
        commits["backbone"] = backbone
    return ResolvedModel(key, paths, commits)


def radgraph_backbone(config: dict) -> str:
    """The BERT model name a DyGIE config loads (tokenizer indexer and embedder use the same one)."""
    return str(config["model"]["embedder"]["token_embedders"]["bert"]["model_name"])


def extract_radgraph(archive: Path, model_type: str, cache_dir: Path) -> tuple[Path, str]:
    """Extract a RadGraph archive once (atomically) into libra's cache; backbone -> local snapshot.

    Returns (``<libra cache>/radgraph/<archive blob>/<model_type>``, backbone description). The
    config's backbone hub id is replaced by its cached snapshot folder (the original is kept as
    ``config.orig.json``) so that nothing asks the hub.
    """
    blob = Path(os.path.realpath(archive)).name[:16]
    root = libra_cache_dir() / "radgraph" / blob
    final = root / model_type
    if not (final / "config.orig.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
            shutil.copyfile(tmp / "config.json", tmp / "config.orig.json")
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    config = json.loads((final / "config.orig.json").read_text(encoding="utf-8"))
    name = radgraph_backbone(config)
    if Path(name).is_dir():
        target, described = name, f"local:{name}"
    else:
        try:
            snap, commit = snapshot(HubRepo(name, (), (("config.json",),)), cache_dir)
        except FileNotFoundError as exc:
            raise MissingModel(f"radgraph:{model_type}", f"its backbone: {exc}") from None
        target, described = str(snap), f"{name}@{commit}"
    current = json.loads((final / "config.json").read_text(encoding="utf-8"))
    if radgraph_backbone(current) != target:
        from libra_cli.atomic import write_text_atomic

        text = json.dumps(config).replace(json.dumps(name), json.dumps(target))
        write_text_atomic(final / "config.json", text)
    return final, described
