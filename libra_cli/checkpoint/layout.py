"""Checkpoint file layouts: the only module that knows Libra's file names and tensor key prefixes.

Layouts (docs/reference-format.md): a *full* checkpoint (config + safetensors/bin weights), a
*LoRA* folder (PEFT adapter + ``non_lora_trainables.bin``, loaded on a base), and a *projector*
folder (``mm_projector.bin`` from stage 1, loaded on a base). The connector's tensors are
``model.mm_projector.*``, in Libra's (``projector.N``) or LLaVA's (``N``) naming.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from libra_cli.checkpoint.files import (  # noqa: F401 - re-exported: layout is where callers look
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    BUNDLED_TOWER_DIR,
    CONNECTOR_PREFIX,
    NON_LORA_FILE,
    PROJECTOR_FILE,
    PROJECTOR_FILES,
    PUBLISHED_PROJECTOR_FILE,
    TOKENIZER_FILES,
    TOWER_FILES,
    TOWER_PATTERNS,
    TOWER_PREFIX,
    TRAINABLES_PREFIX,
    WEIGHT_FILES,
)
from libra_cli.errors import InputError, ModelLoadError

_LLAVA_KEY = re.compile(r"(model\.mm_projector\.)(\d+\.)")


# ------------------------------------------------------------------ damaged files


def redownload_hint(path: str | Path) -> str:
    """How to get a good copy: ``hf download`` for a hub-cache folder, else re-create it."""
    m = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", str(Path(path).resolve()))
    if m:
        return f"download it again: hf download {m.group(1)}/{m.group(2)} --force-download"
    return "copy or convert it again"


def damaged(path: str | Path, exc: BaseException) -> ModelLoadError:
    """A one-line error for a checkpoint file that cannot be read, naming the file and the fix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
        return ModelLoadError(f"{path} holds Python objects besides tensors, and libra never unpickles those "
                              "(loading them could run code); use a safetensors copy of the checkpoint")
    return ModelLoadError(f"{path} is damaged or incomplete ({text[:160]}); {redownload_hint(path)}")


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (its first 8 + N bytes; no tensor is read)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= n <= size - 8:  # a garbage length would otherwise ask for exabytes
            raise damaged(path, ValueError(f"header length {n} does not fit a {size}-byte file"))
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise damaged(path, ValueError(f"unreadable header: {exc}")) from None
    if not isinstance(header, dict):
        raise damaged(path, ValueError("header is not a JSON object"))
    return header


def corrupt_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "this weight file is bad" (safetensors' and pickle's own, truncation)."""

    return (SafetensorError, pickle.UnpicklingError, EOFError)


def _read_errors() -> tuple[type[BaseException], ...]:
    """Everything reading a weight file may raise for a bad file."""
    return (*corrupt_errors(), OSError, ValueError, RuntimeError, KeyError)


# ------------------------------------------------------------------ what a folder holds


def folder_kind(folder: str | Path) -> str:
    """``full``, ``lora`` or ``projector`` (what the folder holds)."""
    f = Path(folder)
    if (f / ADAPTER_CONFIG).is_file():
        return "lora"
    if any((f / w).is_file() for w in WEIGHT_FILES):
        return "full"
    if projector_file(f) is not None:
        return "projector"
    raise ModelLoadError(
        f"{folder} holds no model weights (expected one of {', '.join(WEIGHT_FILES)}, {ADAPTER_CONFIG} "
        f"or {PROJECTOR_FILE})"
    )


def projector_file(folder: str | Path) -> Path | None:
    """The connector file of a stage-1 folder (``mm_projector.bin``, else ``mm_tac_projector.bin``)."""
    for name in PROJECTOR_FILES:
        p = Path(folder) / name
        if p.is_file():
            return p
    return None


def projector_source(path: str | Path) -> Path:
    """A connector file given as the file itself or its folder (recipes' ``pretrain_mm_mlp_adapter``)."""
    p = Path(path)
    if p.is_dir():
        f = projector_file(p)
        if f is None:
            raise InputError(f"{p} holds no {' or '.join(PROJECTOR_FILES)}; give the connector file or its folder")
        return f
    if not p.is_file():
        raise InputError(f"{p} not found; give {' / '.join(PROJECTOR_FILES)} or its folder")
    return p


def non_lora_file(folder: str | Path) -> Path:
    return Path(folder) / NON_LORA_FILE


def has_tokenizer(folder: str | Path) -> bool:
    f = Path(folder)
    return any((f / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def has_spm_model(folder: str | Path) -> bool:
    """The slow tokenizer's SentencePiece model is there (the original-exact codec needs it)."""
    return (Path(folder) / "tokenizer.model").is_file()


def checkpoint_keys(folder: str | Path) -> list[str]:
    """Tensor names of a full checkpoint, read from headers/index only (no tensor is loaded)."""
    f = Path(folder)
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (f / index).is_file():
            return list(json.loads((f / index).read_text())["weight_map"])
    if (f / "model.safetensors").is_file():

        try:
            with safe_open(str(f / "model.safetensors"), "pt") as sf:
                return list(sf.keys())
        except _read_errors() as exc:
            raise damaged(f / "model.safetensors", exc) from exc
    if (f / "pytorch_model.bin").is_file():
        # mmap: only the pickle's key list is read, not gigabytes of tensors that from_pretrained reads again
        try:
            return list(torch.load(f / "pytorch_model.bin", map_location="meta", weights_only=True, mmap=True))
        except _read_errors() as exc:
            raise damaged(f / "pytorch_model.bin", exc) from exc
    return []


def read_tensors(folder: str | Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with ``prefix`` from a (possibly sharded) full checkpoint."""
    f = Path(folder)
    out: dict[str, torch.Tensor] = {}
    files = sorted(f.glob("*.safetensors"))
    if files:

        for file in files:
            try:
                with safe_open(str(file), "pt") as sf:
                    for k in sf.keys():
                        if k.startswith(prefix):
                            out[k] = sf.get_tensor(k)
            except _read_errors() as exc:
                raise damaged(file, exc) from exc
        return out
    for file in sorted(f.glob("pytorch_model*.bin")):
        out.update({k: v for k, v in load_bin(file).items() if k.startswith(prefix)})
    return out


def tower_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Encoder weights saved inside a checkpoint (``unfreeze_mm_vision_tower``), keyed as the encoder's own."""
    return {k[len(TOWER_PREFIX):]: v for k, v in read_tensors(folder, TOWER_PREFIX).items()}


def load_bin(path: str | Path) -> dict[str, torch.Tensor]:
    """A torch state dict file (``mm_projector.bin``, ``non_lora_trainables.bin``), tensors only."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"missing file {path}") from exc
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for bad files
        raise damaged(path, exc) from exc


# ------------------------------------------------------------------ key layouts


def llava_key_mapping(keys: list[str]) -> dict[str, str] | None:
    """``from_pretrained`` key mapping for checkpoints that store the connector LLaVA-style (``mm_projector.0``)."""
    if any(_LLAVA_KEY.match(k) for k in keys):  # anchored: only top-level connector keys
        return {r"^model\.mm_projector\.(\d+)\.": r"model.mm_projector.projector.\1."}
    return None


def normalize_connector_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LLaVA-style ``model.mm_projector.0.weight`` -> Libra's ``model.mm_projector.projector.0.weight``.

    TAC keys (``model.mm_projector.LFE...``) are left alone; only purely numeric first components move.
    """
    return {_LLAVA_KEY.sub(r"\1projector.\2", k, count=1): v for k, v in state.items()}


def to_llava_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Libra's connector naming -> the LLaVA lineage's (``mm_projector.0.weight``), for tests and exports."""
    return {k.replace(CONNECTOR_PREFIX + "projector.", CONNECTOR_PREFIX): v for k, v in state.items()}


def strip_trainables_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``non_lora_trainables`` keys -> model keys (strip ``base_model.``, then ``model.`` when doubled)."""
    state = {(k[len("base_model."):] if k.startswith("base_model.") else k): v for k, v in state.items()}
    if any(k.startswith("model.model.") for k in state):
        state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    return state


def connector_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The connector's own state dict (prefix removed, Libra naming) from any state holding it."""
    state = normalize_connector_keys(state)
    return {k[len(CONNECTOR_PREFIX):]: v for k, v in state.items() if k.startswith(CONNECTOR_PREFIX)}


def only_connector(state: dict[str, torch.Tensor], where: Any) -> dict[str, torch.Tensor]:
    """The ``model.mm_projector.*`` tensors of ``state``; an error naming ``where`` when there are none."""
    out = {k: v for k, v in state.items() if k.startswith(CONNECTOR_PREFIX)}
    if not out:
        raise InputError(f"{where} holds no {CONNECTOR_PREFIX}* tensors; is it a Libra checkpoint with a connector?")
    return out


# ------------------------------------------------------------------ writing the original layouts


def save_projector(connector: torch.nn.Module, folder: str | Path, full_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Stage-1 output: ``mm_projector.bin`` with ``model.mm_projector.*`` keys (``full_state`` wins under ZeRO-3)."""
    full = full_state or {}
    sd = {CONNECTOR_PREFIX + k: (full.get(CONNECTOR_PREFIX + k, v)).detach().cpu().clone()
          for k, v in connector.state_dict().items()}
    path = Path(folder) / PROJECTOR_FILE
    torch.save(sd, path)
    return path


def save_non_lora_trainables(lm: torch.nn.Module, folder: str | Path,
                             full_state: dict[str, torch.Tensor] | None = None) -> Path:
    """Stage-2 output beside the adapter: trainable non-LoRA tensors, and always the connector."""
    full = full_state or {}
    out = {}
    for n, p in lm.named_parameters():
        if (p.requires_grad and "lora_" not in n) or n.startswith(CONNECTOR_PREFIX):
            key = TRAINABLES_PREFIX + n
            out[key] = (full.get(key, p)).detach().cpu().clone()
    path = non_lora_file(folder)
    torch.save(out, path)
    return path


def config_for_both(d: dict[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """A config dict that transformers 4.x (the original code) and 5 both read the same way.

    transformers 5 writes ``rope_parameters`` and ``dtype``; 4.x reads ``rope_theta``, ``rope_scaling``
    and ``torch_dtype`` and silently falls back to theta 10000 without scaling when they are missing
    (wrong positions for Llama-3-based libra-v1.0-3b). Both forms are written.
    """
    d = dict(d)
    rope = d.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" in rope:
            d["rope_theta"] = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        if scaling.get("rope_type", "default") != "default":
            d["rope_scaling"] = {**scaling, "type": scaling["rope_type"]}
        else:
            d.setdefault("rope_scaling", None)
    if dtype is not None:
        d["dtype"] = dtype
    saved = d.get("dtype") or d.get("torch_dtype")
    if saved:
        d["dtype"] = d["torch_dtype"] = str(saved).replace("torch.", "")
    return d


def write_config(folder: str | Path, d: dict[str, Any], dtype: str | None = None) -> Path:
    """``config.json`` readable by transformers 4.x and 5 (see :func:`config_for_both`)."""
    path = Path(folder) / "config.json"
    path.write_text(json.dumps(config_for_both(d, dtype), indent=2, sort_keys=True) + "\n")
    return path


def without_tower(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A model state without the encoder's weights (not saved, as in the original)."""
    return {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}


def copy_tokenizer_files(src: str | Path | None, dst: str | Path) -> list[str]:
    """Copy every tokenizer file of ``src`` into ``dst`` (the slow SentencePiece model included)."""
    if src is None:
        return []
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def bundle_tower(tower_folder: Path, dst: Path) -> int:
    """Copy the encoder's config, weights and preprocessor (only those) into ``dst``; returns bytes copied."""
    dst.mkdir()
    n = 0
    weights = sorted(tower_folder.glob("*.safetensors")) or sorted(tower_folder.glob("pytorch_model*.bin"))
    if not weights:
        raise InputError(f"vision tower folder {tower_folder} holds no weights (*.safetensors / pytorch_model.bin)")
    for f in [*(tower_folder / name for name in TOWER_FILES), *weights]:
        if f.is_file():
            shutil.copy(f, dst / f.name)  # follows hub-cache symlinks
            n += f.stat().st_size
    if not (dst / "preprocessor_config.json").is_file():
        raise InputError(f"vision tower folder {tower_folder} has no preprocessor_config.json; cannot bundle it")
    return n


def remove_adapter_files(folder: str | Path) -> None:
    """A merged checkpoint must not look like a LoRA folder."""
    for name in ADAPTER_FILES:
        (Path(folder) / name).unlink(missing_ok=True)


def weight_shards(folder: str | Path) -> list[str]:
    return sorted(f.name for f in Path(folder).glob("*.safetensors"))
