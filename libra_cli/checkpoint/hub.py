"""Where checkpoints and scorer models come from: a local folder, or the Hugging Face hub (cache first).

The only module that talks to the hub (``huggingface_hub``): snapshots of checkpoints, single files
of scorer models (``libra eval download``), the cache's contents (``libra doctor``) and uploads
(``libra push``). Offline (``HF_HUB_OFFLINE=1``) it reads the local cache and a missing repo is a
one-line error naming the download command. It sits with the inputs (``libra_cli.metrics`` uses it).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from libra_cli.errors import LibraError, ModelLoadError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def offline() -> bool:
    """True when the user asked for the local cache only (``HF_HUB_OFFLINE``, as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("", "0", "false", "no", "off")


def cache_dir() -> Path:
    """The Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "huggingface.co")


def cached_repos(cache: Path) -> dict[str, int]:
    """repo id -> bytes on disk of every repository in the cache at ``cache`` (no network)."""
    from huggingface_hub import scan_cache_dir

    return {repo.repo_id: repo.size_on_disk for repo in scan_cache_dir(cache).repos} if cache.is_dir() else {}


def repo_files(repo_id: str, revision: str | None = None, timeout: float = 15) -> tuple[str | None, dict[str, int]]:
    """(commit, file name -> size) of a hub repository at ``revision`` (one hub call)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, files_metadata=True, timeout=timeout)
    return info.sha, {s.rfilename: int(s.size or 0) for s in info.siblings or []}


def fetch_file(repo_id: str, name: str, revision: str | None, cache: Path) -> str:
    """One file of a hub repository into the cache at ``cache`` (the hub's progress bar); its local path."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, name, revision=revision, cache_dir=str(cache))


def upload_folder(folder: Path, repo_id: str, *, private: bool, revision: str | None, message: str,
                  ignore: list[str], token: str | None = None) -> tuple[str, str | None]:
    """Create ``repo_id`` if needed and upload ``folder``: (repo url, commit). A refused or failed upload is a
    one-line :class:`LibraError`."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision, ignore_patterns=ignore,
                                 commit_message=message)
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise LibraError(f"the hub refused the upload to {repo_id} ({status}); log in with `hf auth login` "
                             "or pass a write token (HF_TOKEN)") from exc
        raise LibraError(f"upload to {repo_id} failed: {str(exc).splitlines()[0]}") from exc
    except OSError as exc:
        raise LibraError(f"cannot reach the hub to upload {repo_id} ({exc}); check the network or HF_ENDPOINT") from exc
    return str(url), getattr(info, "oid", None)


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path."""
    return not name.startswith((".", "/", "~")) and bool(HUB_ID.fullmatch(name))


def commit_of(folder: str | Path) -> str | None:
    """The commit a hub-cache snapshot folder holds (``.../snapshots/<sha>``), None for other folders."""
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", str(Path(folder)))
    return m.group(1) if m else None


def hub_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None, what: str = "model",
               revision: str | None = None, progress: bool = True) -> str:
    """A local folder for ``name_or_path``: the folder itself, or a hub snapshot at ``revision`` (cache first).

    Only the files matching ``allow_patterns`` are fetched, with a progress bar on stderr (``progress``).
    """
    from libra_cli.paths import ALIASES

    p = ALIASES.get(str(name_or_path)) or Path(str(name_or_path)).expanduser()
    if p.is_dir():
        if revision:
            raise ModelLoadError(f"--revision {revision} applies to hub ids; {name_or_path} is a local folder")
        return str(p.resolve())
    name = str(name_or_path)
    if p.exists():
        raise ModelLoadError(f"{what} path {name} is a file; give the checkpoint folder")
    if not is_hub_id(name):
        raise ModelLoadError(f"{what} {name!r} is neither a folder nor a hub id (owner/name); check the path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    at = f" at revision {revision}" if revision else ""
    rev = f" --revision {revision}" if revision else ""
    try:
        with _progress(progress):
            return snapshot_download(name, allow_patterns=allow_patterns, revision=revision)
    except RevisionNotFoundError as exc:
        raise ModelLoadError(f"{what} {name!r} has no revision {revision!r}; check the branch, tag or commit") from exc
    except LocalEntryNotFoundError as exc:
        if offline():
            raise ModelLoadError(
                f"{what} {name!r}{at} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it first (libra download {name}{rev}, without HF_HUB_OFFLINE) or pass a local folder"
            ) from exc
        raise ModelLoadError(f"cannot download {what} {name!r} (no network?); pass a local folder") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"{what} {name!r} does not exist on the Hugging Face hub (or is private: log in)") from exc
    except Exception as exc:  # noqa: BLE001 - network stack errors vary
        raise ModelLoadError(f"cannot fetch {what} {name!r}: {exc}") from exc


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[None]:
    """Show the hub's download progress bars (on stderr) while fetching, whatever else silenced them."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if show:
        enable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            disable_progress_bars()


def checkpoint_folder(name: str | Path, revision: str | None = None, what: str = "model", progress: bool = True) -> str:
    """A checkpoint's folder with only the files it needs (safetensors weights, else the .bin ones)."""
    from libra_cli.checkpoint.files import BIN_WEIGHT_PATTERNS, CHECKPOINT_PATTERNS, WEIGHT_FILES

    folder = hub_folder(name, allow_patterns=CHECKPOINT_PATTERNS, what=what, revision=revision, progress=progress)
    f = Path(folder)
    needs_bin = (is_hub_id(str(name)) and not any((f / w).is_file() for w in WEIGHT_FILES)
                 and not (f / "adapter_config.json").is_file() and not any(f.glob("mm_*projector.bin")))
    if needs_bin:  # an older repo with pytorch_model.bin only
        folder = hub_folder(name, allow_patterns=[*CHECKPOINT_PATTERNS, *BIN_WEIGHT_PATTERNS], what=what,
                            revision=revision, progress=progress)
    return folder


def folder_bytes(folder: str | Path) -> int:
    """Bytes of the files under ``folder`` (hub snapshots are links into the blob store: followed)."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def download(model: str, revision: str | None = None, model_base: str | None = None,
             with_tower: bool = True) -> list[dict[str, object]]:
    """Fetch a checkpoint (and its base and vision tower) into the Hugging Face cache for offline use.

    Returns what is now local: one row per repo with its folder, commit and size.
    """
    import json

    from libra_cli.checkpoint.files import TOWER_PATTERNS

    rows: list[dict[str, object]] = []

    def add(name: str, folder: str, what: str) -> None:
        rows.append({"what": what, "name": name, "folder": folder, "commit": commit_of(folder),
                     "bytes": folder_bytes(folder)})

    folder = checkpoint_folder(model, revision=revision)
    add(model, folder, "model")
    if model_base:
        add(model_base, checkpoint_folder(model_base, what="base model"), "base model")
    cfg_path = Path(folder) / "config.json"
    tower = json.loads(cfg_path.read_text()).get("mm_vision_tower") if cfg_path.is_file() else None
    if with_tower and isinstance(tower, str) and is_hub_id(tower):
        add(tower, hub_folder(tower, allow_patterns=TOWER_PATTERNS, what="vision tower"), "vision tower")
    return rows
