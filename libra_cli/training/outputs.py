"""Training outputs: never train over an earlier run by accident, publish checkpoints only when complete,
and resume from the newest complete one."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from libra_cli.errors import InputError


def check_output_dir(output_dir: str | Path, resume: bool, force: bool) -> None:
    """Refuse to train over an earlier run unless resuming it or asked to replace it (``--force``)."""
    out = Path(output_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(f"output folder {out} is a file; give a folder path with --out")
    contents = [p for p in out.iterdir() if p.name not in (".DS_Store",)]
    if not contents or resume:
        return
    if not force:
        raise InputError(f"output folder {out} holds an earlier run ({len(contents)} entries); pass --resume to "
                         "continue it, --force to start again there, or choose another --out")
    for p in contents:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


STAGING_PREFIX = ".staging-checkpoint-"
COMPLETE_MARK = "trainer_state.json"  # the Trainer writes it last


def publish_checkpoint(staging: Path, run_dir: Path, step: int, state: Any) -> Path:
    """Rename a fully written ``.staging-checkpoint-N/checkpoint-N`` to ``checkpoint-N`` (replacing a re-save)."""
    written = staging / f"checkpoint-{step}"
    final = run_dir / f"checkpoint-{step}"
    # the Trainer looked for the best checkpoint under the staging name: point it at the published one
    best = run_dir / f"checkpoint-{state.best_global_step}" if getattr(state, "best_global_step", None) else None
    state.best_model_checkpoint = str(best) if best is not None and (best.is_dir() or best == final) else None
    state_file = written / COMPLETE_MARK
    if state_file.is_file():
        saved = json.loads(state_file.read_text())
        saved["best_model_checkpoint"] = state.best_model_checkpoint
        state_file.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(written, final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders that were written completely, oldest first (staging folders never count)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)
             and (p / COMPLETE_MARK).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(resume: str | bool | None, output_dir: str) -> str | None:
    """``--resume``: ``True``/``"latest"`` -> the newest complete checkpoint in ``output_dir``; a path -> that path.

    A run killed while writing a checkpoint leaves a hidden staging folder (removed here) and never a
    half-written ``checkpoint-N``; older layouts' incomplete folders (no trainer state) are skipped.
    """
    if not resume:
        return None
    for stale in Path(output_dir).glob(f"{STAGING_PREFIX}*") if Path(output_dir).is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)
    if resume is True or resume == "latest":
        done = complete_checkpoints(output_dir)
        if not done:
            raise InputError(f"--resume: no complete checkpoint-N folder in {output_dir}; drop --resume to start fresh")
        return str(done[-1])
    if not Path(str(resume)).is_dir():
        raise InputError(f"--resume {resume}: not a checkpoint folder")
    return str(resume)
