"""``libra eval download``: fetch scorer models into the Hugging Face cache once, with sizes and progress.

What is already cached is checked locally first (no network). For the rest, one ``model_info``
call per repository gives the commit and file sizes; files are then fetched at that commit with
``hf_hub_download`` (its progress bars), so a snapshot is never a mix of two revisions; every hub call
goes through ``libra_cli.checkpoint.hub``. RadGraph
archives name their BERT backbone inside ``config.json``; that repository is fetched as well.
"""

from __future__ import annotations

import fnmatch
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libra_cli.checkpoint.hub import fetch_file, offline, repo_files
from libra_cli.errors import InputError
from libra_cli.metrics.models import SCORER_MODELS, HubRepo, hub_cache_dir, radgraph_backbone, snapshot
from libra_cli.metrics.registry import parse_metrics, scorer_model_keys


@dataclass
class RepoPlan:
    """One repository: cached already, or the files (and bytes) to fetch."""

    model: str
    repo: HubRepo
    cached: bool
    commit: str | None = None
    files: list[tuple[str, int]] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.files)


def models_for(suite: str | None, metrics: str | None, models: list[str] | None, radgraph_model: str = "radgraph-xl",
               judge_model: str | None = None) -> list[str]:
    """Scorer model keys named by ``--model`` or needed by ``--suite``/``--metrics`` (default: suite libra)."""
    keys: list[str] = []
    for key in models or []:
        if key not in SCORER_MODELS:
            raise InputError(f"unknown scorer model {key!r}; choose from {', '.join(SCORER_MODELS)}")
        keys.append(key)
    if suite or metrics or not keys:
        groups = parse_metrics(metrics, suite or ("libra" if not metrics else None))
        for needed in scorer_model_keys(groups, radgraph_model, judge_model).values():
            keys.extend(needed)
    return list(dict.fromkeys(keys))


def local_plan(keys: list[str], cache_dir: Path | None = None) -> list[RepoPlan]:
    """Which repositories of ``keys`` are cached (no network)."""
    cache = cache_dir or hub_cache_dir()
    plans = []
    for key in keys:
        for repo in SCORER_MODELS[key].repos:
            try:
                _, commit = snapshot(repo, cache)
                plans.append(RepoPlan(key, repo, True, commit))
            except FileNotFoundError:
                plans.append(RepoPlan(key, repo, False))
    return plans


def _remote(plan: RepoPlan) -> None:
    """Fill ``plan`` with the commit and the matching files' sizes (one hub call)."""
    try:
        plan.commit, names = repo_files(plan.repo.repo_id, revision=plan.repo.revision)
    except Exception as exc:  # noqa: BLE001 - connection, auth, missing repo: all end the same way
        raise InputError(f"cannot get {plan.repo.repo_id} from the Hugging Face hub ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]}); check the network, or copy a hub cache that has it") from None
    chosen: list[tuple[str, int]] = []
    for pattern in plan.repo.patterns:
        for name in sorted(names):
            if fnmatch.fnmatch(name, pattern) and all(name != c for c, _ in chosen) and "/" not in name:
                chosen.append((name, names[name]))
    if "model.safetensors" in dict(chosen):  # one weights format is enough
        chosen = [(n, s) for n, s in chosen if n != "pytorch_model.bin"]
    plan.files = chosen


def _backbone_repo(archive: Path) -> HubRepo | None:
    """The BERT backbone a RadGraph archive's config names (None when it is a local path)."""
    with tarfile.open(archive, "r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "config.json"), None)
        if member is None:
            raise InputError(f"{archive} has no config.json; the download is damaged, delete it and run again")
        fh = tar.extractfile(member)
        assert fh is not None
        name = radgraph_backbone(json.load(fh))
    if Path(name).is_dir():
        return None
    base = SCORER_MODELS["bertscore-original"].repos[0]
    return HubRepo(name, base.patterns, base.required)


def download(keys: list[str], cache_dir: Path | None = None, console: Any = None) -> list[RepoPlan]:
    """Fetch what is missing; returns every repository's plan (cached ones included)."""
    cache = cache_dir or hub_cache_dir()
    plans = local_plan(keys, cache)
    missing = [p for p in plans if not p.cached]
    if missing and offline():
        raise InputError("HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it on a machine with network "
                         f"({len(missing)} repositories missing: {', '.join(p.repo.repo_id for p in missing)})")
    i = 0
    while i < len(plans):
        plan = plans[i]
        i += 1
        if not plan.cached:
            _remote(plan)
            if console is not None:
                console.print(f"{plan.repo.repo_id} @ {plan.commit[:10] if plan.commit else '?'}: "
                              f"{len(plan.files)} files, {plan.bytes / 1e6:,.1f} MB")
            for name, _ in plan.files:
                fetch_file(plan.repo.repo_id, name, plan.commit, cache)
            if not plan.files:
                raise InputError(f"{plan.repo.repo_id} has none of the files libra needs ({', '.join(plan.repo.patterns)})")
        radgraph_type = SCORER_MODELS[plan.model].radgraph_type
        if radgraph_type and plan.repo.repo_id.endswith("RRG_scorers"):
            snap, _ = snapshot(plan.repo, cache)
            backbone = _backbone_repo(snap / f"{radgraph_type}.tar.gz")
            if backbone is not None and all(p.repo.repo_id != backbone.repo_id for p in plans):
                try:
                    _, commit = snapshot(backbone, cache)
                    plans.append(RepoPlan(plan.model, backbone, True, commit))
                except FileNotFoundError:
                    if offline():
                        raise InputError(f"HF_HUB_OFFLINE is set and RadGraph's backbone {backbone.repo_id} is not "
                                         "cached; unset it on a machine with network") from None
                    plans.append(RepoPlan(plan.model, backbone, False))
    return plans
