"""Where checkpoints come from: a local folder, or a Hugging Face hub snapshot (cache first).

The only module that talks to the hub for model files; offline (``HF_HUB_OFFLINE=1``) it reads
the local cache and a missing repo is a one-line error naming the download command.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from libra_cli.errors import ModelLoadError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def offline() -> bool:
    """True when the user asked for the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path."""
    return not name.startswith((".", "/", "~")) and bool(HUB_ID.fullmatch(name))


def commit_of(folder: str | Path) -> str | None:
    """The commit a hub-cache snapshot folder holds (``.../snapshots/<sha>``), None for other folders."""
    m = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", str(Path(folder)))
    return m.group(1) if m else None


def hub_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None, what: str = "model",
               revision: str | None = None) -> str:
    """A local folder for ``name_or_path``: the folder itself, or a hub snapshot at ``revision`` (cache first).

    Only the files matching ``allow_patterns`` are fetched, with a progress bar on stderr.
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
        with _progress():
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
def _progress() -> Iterator[None]:
    """Show the hub's download progress bars (on stderr) while fetching, whatever else silenced them."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if os.environ.get("LIBRA_QUIET") != "1":
        enable_progress_bars()
    try:
        yield
    finally:
        if was_disabled:
            disable_progress_bars()


def checkpoint_folder(name: str | Path, revision: str | None = None, what: str = "model") -> str:
    """A checkpoint's folder with only the files it needs (safetensors weights, else the .bin ones)."""
    from libra_cli.checkpoint.files import BIN_WEIGHT_PATTERNS, CHECKPOINT_PATTERNS, WEIGHT_FILES

    folder = hub_folder(name, allow_patterns=CHECKPOINT_PATTERNS, what=what, revision=revision)
    f = Path(folder)
    needs_bin = (is_hub_id(str(name)) and not any((f / w).is_file() for w in WEIGHT_FILES)
                 and not (f / "adapter_config.json").is_file() and not any(f.glob("mm_*projector.bin")))
    if needs_bin:  # an older repo with pytorch_model.bin only
        folder = hub_folder(name, allow_patterns=[*CHECKPOINT_PATTERNS, *BIN_WEIGHT_PATTERNS], what=what,
                            revision=revision)
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
