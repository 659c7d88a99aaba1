"""Finding and loading the image encoder a Libra config names (``mm_vision_tower``).

The encoder is not stored in Libra checkpoints: the config names a folder (relative to the
checkpoint, or the working directory) or a hub id, as in the original code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from libra_cli.checkpoint.hub import hub_folder
from libra_cli.checkpoint.layout import TOWER_PATTERNS, corrupt_errors, damaged
from libra_cli.errors import ModelLoadError
from libra_cli.images import ImageProcessorConfig
from libra_cli.model.encoders import VisionTower, parse_select_layer, vision_model_class


def tower_name(config: Any, override: str | None = None) -> str:
    """The encoder a config names (``mm_vision_tower``), or the override."""
    name = override or getattr(config, "mm_vision_tower", None) or getattr(config, "vision_tower", None)
    if not name:
        raise ModelLoadError("config.json has no mm_vision_tower; pass --vision-tower PATH_OR_HUB_ID")
    return str(name)


def resolve_vision_tower_path(name: str, checkpoint_dir: str | Path | None, override: str | None = None) -> str:
    """Resolve ``mm_vision_tower``: the checkpoint folder first, then the working dir, then the hub id."""
    if override:
        name = override
    if name.startswith("hf-hub:"):
        return name
    candidates: list[Path] = []
    p = Path(name).expanduser()
    if p.is_absolute():
        candidates.append(p)
    else:
        if checkpoint_dir is not None:
            candidates.append(Path(checkpoint_dir) / p)
        candidates.append(Path.cwd() / p)
    for c in candidates:
        if (c / "config.json").is_file():
            return str(c.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        tried = ", ".join(str(c) for c in candidates)
        raise ModelLoadError(f"vision tower {name!r} not found (tried {tried}); pass --vision-tower PATH_OR_HUB_ID")
    return name  # hub id


def tower_folder(name: str, progress: bool = True) -> Path:
    """A local folder holding the encoder (a hub id is fetched: configs, weights, preprocessor only)."""
    return Path(hub_folder(name, allow_patterns=TOWER_PATTERNS, what="vision tower", progress=progress))


def load_vision_tower(config: Any, checkpoint_dir: str | Path | None = None, override: str | None = None,
                      dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                      progress: bool = True) -> VisionTower:
    """Build the encoder named by the Libra config (weights from its own folder or hub repo)."""
    path = resolve_vision_tower_path(tower_name(config), checkpoint_dir, override)
    select_layer = parse_select_layer(getattr(config, "mm_vision_select_layer", "all"))
    select_feature = getattr(config, "mm_vision_select_feature", "patch") or "patch"
    maira = bool(getattr(config, "use_maira_feature_norm", False))
    if path.startswith("hf-hub:"):
        return _open_clip_tower(path, select_layer, select_feature, dtype, device)
    folder = tower_folder(path, progress)
    vcfg = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    model_cls = vision_model_class(vcfg.model_type)
    if model_cls is None:
        raise ModelLoadError(f"unsupported vision tower type {vcfg.model_type!r} at {path}; use DINOv2, CLIP or SigLIP")
    if hasattr(vcfg, "vision_config") and vcfg.model_type in ("clip", "siglip", "siglip2"):
        vcfg = vcfg.vision_config
    try:
        tower = model_cls.from_pretrained(folder, config=vcfg, dtype=dtype)
    except corrupt_errors() as exc:
        raise damaged(folder, exc) from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the vision tower from {folder}: {exc}") from exc
    tower.requires_grad_(False)
    tower.eval()
    proc = ImageProcessorConfig.from_pretrained(folder)
    name = tower_name(config)
    return VisionTower(tower, proc, select_layer, select_feature, maira, name=name).to(device)


def _open_clip_tower(name: str, select_layer: Any, select_feature: str, dtype: torch.dtype, device: Any) -> VisionTower:
    """``hf-hub:owner/name`` through open_clip (BiomedCLIP for LLaVA-Rad), wrapped as a :class:`VisionTower`."""
    try:
        import open_clip
    except ImportError as exc:
        raise ModelLoadError(f"{name} is an open_clip tower: pip install 'libra-cli[openclip]'") from exc
    from libra_cli.model.openclip import wrap_open_clip

    try:
        model, _ = open_clip.create_model_from_pretrained(name)
    except Exception as exc:  # noqa: BLE001 - hub and format errors vary
        raise ModelLoadError(f"cannot load open_clip tower {name}: {exc}") from exc
    return wrap_open_clip(model, name, select_layer, select_feature, dtype=dtype, device=device)
