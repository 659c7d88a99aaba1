"""Batch planning: shards, length-bucketed batches, batch size from free memory, output names.

Everything here is a pure function of the inputs (no model), so the split of work is the same in
every process of a sharded run and on every rerun.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from libra_cli.batch.inputs import ErrorRecord, Item
from libra_cli.checkpoint.memory import available_bytes, per_sample_bytes  # noqa: F401 - re-exported
from libra_cli.errors import InputError


def shard_items(items: list[Item], errors: list[ErrorRecord], num_shards: int, shard: int
                ) -> tuple[list[Item], list[ErrorRecord]]:
    """Round-robin by input position: every shard sees the same input, so the split is deterministic."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise InputError(f"--shard must be in 0..{num_shards - 1} (got {shard} of {num_shards})")
    if num_shards == 1:
        return items, errors
    return ([i for i in items if i.index % num_shards == shard],
            [e for e in errors if e.index % num_shards == shard])


def shard_path(out: Path, num_shards: int, shard: int) -> Path:
    """``answers.jsonl`` -> ``answers.shard-01-of-04.jsonl`` (the shard's own resumable file)."""
    out = Path(out)
    stem, suffix = (out.name[: -len(out.suffix)], out.suffix) if out.suffix else (out.name, "")
    return out.with_name(f"{stem}.shard-{shard:02d}-of-{num_shards:02d}{suffix}")


def errors_path(out: Path) -> Path:
    return Path(str(out) + ".errors.jsonl")


def plan_batches(items: list[Item], lengths: dict[int, int], batch_size: int) -> list[list[Item]]:
    """Length-bucketed batches, longest first (an OOM shows up at once, not after an hour).

    Within equal lengths, samples that share an image (connected through current/prior) are kept
    together so the encoder cache hits within a batch or the next one.
    """
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for it in items:
        if it.prior is not None:
            a, b = find(it.current.key), find(it.prior.key)
            if a != b:
                parent[b] = a
    first: dict[str, int] = {}
    for it in items:
        first.setdefault(find(it.current.key), it.index)
    order = sorted(items, key=lambda it: (-lengths[it.index], first[find(it.current.key)], it.index))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]



def shard_from_env() -> tuple[int, int]:
    """(num_shards, shard) from ``accelerate launch`` / ``torchrun`` (WORLD_SIZE, RANK), else (1, 0)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    except ValueError:
        return 1, 0


def launched_by_torchrun() -> bool:
    """True under ``torchrun`` / ``accelerate launch`` (both run torch elastic agents)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def resolve_shard(num_shards: int | None, shard: int | None) -> tuple[int, int]:
    """(num_shards, shard) from the flags, else from the launcher's environment."""
    env_n, env_k = shard_from_env()
    n = num_shards if num_shards is not None else env_n
    k = shard if shard is not None else (env_k if num_shards is None else 0)
    if n < 1 or not 0 <= k < n:
        raise InputError(f"--shard must be in 0..{max(n - 1, 0)} (got {k}); --num-shards must be >= 1")
    return n, k


def parse_batch_size(value: str) -> int | str:
    """``auto`` or a positive integer."""
    if value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"--batch-size must be a positive number or auto (got {value!r})")
    return int(value)


def apply_limit(items: list[Item], errors: list[ErrorRecord], limit: int | None) -> tuple[list[Item], list[ErrorRecord]]:
    """The first ``limit`` samples, with the input errors that come before the last of them."""
    if limit is None:
        return items, errors
    cut = items[limit - 1].index if len(items) >= limit else None
    return items[:limit], [e for e in errors if cut is None or e.index <= cut]


def shard_device(device: str, num_shards: int, shard: int) -> str:
    """With several shards on a GPU machine, one GPU per process holding the whole model."""
    if num_shards > 1 and device == "auto":
        import torch

        if torch.cuda.is_available():
            os.environ["LIBRA_NO_DEVICE_MAP"] = "1"
            return f"cuda:{int(os.environ.get('LOCAL_RANK', shard)) % torch.cuda.device_count()}"
    return device



def pick_batch_size(free_bytes: int, sample_bytes: int, n_items: int, cap: int = 256, headroom: float = 0.7) -> int:
    """The largest batch whose estimated need fits in ``headroom`` of the free memory (at least 1)."""
    fit = int(free_bytes * headroom) // max(sample_bytes, 1)
    return max(1, min(fit, cap, max(n_items, 1)))


def auto_batch_size(loaded: Any, settings: Any, max_prompt_len: int, n_items: int) -> int:
    """``--batch-size auto``: the largest batch that fits the free memory (GPU, or RAM on a CPU, where it is at
    most 16: a CPU gains little beyond)."""
    import torch

    dev = str(loaded.device)
    free, _ = available_bytes(dev if dev.startswith("cuda") else "cpu")
    cap = 256 if dev.startswith("cuda") else 16
    elem = torch.empty((), dtype=loaded.dtype).element_size()
    beams = max(settings.num_beams, settings.num_return_sequences)
    if getattr(settings, "decoding", "standard") == "ccd":
        beams *= 2  # CCD keeps two KV caches per sequence (the original and the guided prompt)
    need = per_sample_bytes(loaded.config, max_prompt_len, settings.max_new_tokens, beams, elem, shared_prompt=True)
    return pick_batch_size(free, need, n_items, cap=cap) if free else max(1, min(cap, n_items))
