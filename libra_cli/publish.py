"""``libra push``: upload a trained or converted folder to the Hugging Face hub, with its model card.

Only what a user of the checkpoint needs goes up (no optimizer state, no intermediate checkpoints, no
temporary files); a folder that does not load as a Libra checkpoint is refused before any upload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from libra_cli.errors import InputError

IGNORE = ["checkpoint-*", "checkpoint-*/**", ".staging-*", ".staging-*/**", "optimizer.pt", "scheduler.pt",
          "rng_state*", "trainer_state.json", "training_args.bin", "*.tmp", ".*", "runs/**", "best/**"]


@dataclass
class PushResult:
    repo_id: str
    url: str
    commit: str | None
    files: int
    bytes: int
    seconds: float


def push(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
         message: str | None = None, token: str | None = None) -> PushResult:
    """Create ``repo_id`` if needed and upload ``folder`` (writing a model card first if it has none)."""
    from libra_cli.checkpoint import layout
    from libra_cli.checkpoint.hub import is_hub_id, upload_folder

    src = Path(folder)
    if not src.is_dir():
        raise InputError(f"{src} is not a folder; give the output folder of libra train or libra convert")
    if not is_hub_id(repo_id):
        raise InputError(f"repo id {repo_id!r} must look like owner/name")
    kind = layout.folder_kind(src)  # refuses folders without weights
    if not (src / "config.json").is_file():
        raise InputError(f"{src} has no config.json; it is not a Libra checkpoint folder")
    if not (src / "README.md").is_file():
        from libra_cli.checkpoint.card import CardFacts, write_model_card

        write_model_card(src, CardFacts(title=repo_id.split("/")[-1], kind=kind), repo=repo_id)
    files = [p for p in src.rglob("*") if p.is_file() and not _ignored(p.relative_to(src))]
    t0 = time.perf_counter()
    url, commit = upload_folder(src, repo_id, private=private, revision=revision, ignore=IGNORE, token=token,
                                message=message or f"Upload {kind} Libra checkpoint with libra push")
    return PushResult(repo_id, url, commit, len(files), sum(p.stat().st_size for p in files), time.perf_counter() - t0)


def _ignored(rel: Path) -> bool:
    import fnmatch

    s = rel.as_posix()
    return any(fnmatch.fnmatch(s, pat) or fnmatch.fnmatch(rel.parts[0], pat) for pat in IGNORE)
