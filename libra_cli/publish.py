"""``libra push``: upload a trained or converted folder to the Hugging Face hub, with its model card.

Only what a user of the checkpoint needs goes up (no optimizer state, no intermediate checkpoints, no
temporary files); a folder that does not load as a Libra checkpoint is refused before any upload.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from libra_cli.errors import InputError, LibraError

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
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from libra_cli.checkpoint import layout
    from libra_cli.checkpoint.hub import is_hub_id

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
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(src), repo_id=repo_id, revision=revision, ignore_patterns=IGNORE,
                                 commit_message=message or f"Upload {kind} Libra checkpoint with libra push")
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise LibraError(f"the hub refused the upload to {repo_id} ({status}); log in with `hf auth login` "
                             "or pass a write token (HF_TOKEN)") from exc
        raise LibraError(f"upload to {repo_id} failed: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise LibraError(f"cannot reach the hub to upload {repo_id} ({exc}); check the network or HF_ENDPOINT") from exc
    return PushResult(repo_id, str(url), getattr(info, "oid", None), len(files), sum(p.stat().st_size for p in files),
                      time.perf_counter() - t0)


def _ignored(rel: Path) -> bool:
    import fnmatch

    s = rel.as_posix()
    return any(fnmatch.fnmatch(s, pat) or fnmatch.fnmatch(rel.parts[0], pat) for pat in IGNORE)
