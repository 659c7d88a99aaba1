"""Image encoders (RAD-DINO/DINOv2, CLIP, SigLIP via transformers; open_clip towers as an extra).

All return stacked hidden states ``[N, L, P, D]`` selected as the original code did
(docs/reference-format.md#encoders). Finding and loading the weights is ``libra_cli.checkpoint.tower``'s job.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from libra_cli.errors import InputError
from libra_cli.images import ImageProcessorConfig


class VisionTower(nn.Module):
    """Wraps an HF vision model; attribute name ``vision_tower`` keeps the original key layout."""

    def __init__(
        self,
        vision_tower: nn.Module,
        processor: ImageProcessorConfig,
        select_layer: int | str = "all",
        select_feature: str = "patch",
        maira_feature_norm: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        self.processor = processor
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.maira_feature_norm = maira_feature_norm
        self.name = name
        mt = getattr(vision_tower.config, "model_type", "")
        # SigLIP has no CLS token: "patch" keeps every token there
        self.has_cls = mt not in ("siglip_vision_model", "siglip", "siglip2_vision_model")
        self.trainable = False

    @property
    def hidden_size(self) -> int:
        return int(self.vision_tower.config.hidden_size)

    @property
    def num_layers_selected(self) -> int:
        return int(self.vision_tower.config.num_hidden_layers) if self.select_layer == "all" else 1

    @property
    def num_patches(self) -> int:
        cfg = self.vision_tower.config
        n = (int(cfg.image_size) // int(cfg.patch_size)) ** 2
        return n + (1 if self.select_feature == "cls_patch" and self.has_cls else 0)

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        if self.select_feature == "patch":
            return x[:, 1:] if self.has_cls else x
        if self.select_feature == "cls_patch":
            return x
        raise InputError(f"unknown mm_vision_select_feature {self.select_feature!r}; expected 'patch' or 'cls_patch'")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` -> ``[N, L, P, D]``."""
        p = next(self.vision_tower.parameters())
        pixel_values = pixel_values.to(device=p.device, dtype=p.dtype)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = self.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        if self.select_layer == "all":
            feats = torch.stack([self._select(h) for h in out.hidden_states[1:]], dim=1)
        else:
            k = int(self.select_layer)
            h = out.last_hidden_state if self.maira_feature_norm else out.hidden_states[k]
            feats = self._select(h).unsqueeze(1)
        return feats


def parse_select_layer(value: Any) -> int | str:
    """``mm_vision_select_layer``: ``all`` (every layer, TAC) or one layer index."""
    if value in (None, "all"):
        return "all"
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"mm_vision_select_layer must be 'all' or an integer, got {value!r}") from exc


def vision_model_class(model_type: str) -> Any:
    """The transformers vision model for an encoder's ``model_type`` (None if unsupported)."""
    import transformers as tf

    return {
        "dinov2": tf.Dinov2Model,
        "dinov2_with_registers": getattr(tf, "Dinov2WithRegistersModel", None),
        "clip": tf.CLIPVisionModel,
        "clip_vision_model": tf.CLIPVisionModel,
        "siglip": tf.SiglipVisionModel,
        "siglip_vision_model": tf.SiglipVisionModel,
    }.get(model_type)
