"""Where checkpoints come from: a local folder, or a Hugging Face hub snapshot (cache first).

The only module that talks to the hub for model files; offline (``HF_HUB_OFFLINE=1``) it reads
the local cache and a missing repo is a one-line error naming the download command.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from libra_cli.errors import ModelLoadError

HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def offline() -> bool:
    """True when the user asked for the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path."""
    return not name.startswith((".", "/", "~")) and bool(HUB_ID.fullmatch(name))


def hub_folder(name_or_path: str | Path, allow_patterns: list[str] | None = None, what: str = "model") -> str:
    """A local folder for ``name_or_path``: the folder itself, or a hub snapshot (cache first)."""
    from libra_cli.paths import ALIASES

    p = ALIASES.get(str(name_or_path)) or Path(str(name_or_path)).expanduser()
    if p.is_dir():
        return str(p.resolve())
    name = str(name_or_path)
    if p.exists():
        raise ModelLoadError(f"{what} path {name} is a file; give the checkpoint folder")
    if not is_hub_id(name):
        raise ModelLoadError(f"{what} {name!r} is neither a folder nor a hub id (owner/name); check the path")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return snapshot_download(name, allow_patterns=allow_patterns)
    except LocalEntryNotFoundError as exc:
        if offline():
            raise ModelLoadError(
                f"{what} {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"download it first (hf download {name}) or pass a local folder"
            ) from exc
        raise ModelLoadError(f"cannot download {what} {name!r} (no network?); pass a local folder") from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"{what} {name!r} does not exist on the Hugging Face hub (or is private: log in)") from exc
    except Exception as exc:  # noqa: BLE001 - network stack errors vary
        raise ModelLoadError(f"cannot fetch {what} {name!r}: {exc}") from exc
