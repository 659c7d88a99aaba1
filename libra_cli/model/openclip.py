"""open_clip image towers (``hf-hub:`` names such as BiomedCLIP, used by LLaVA-Rad): optional extra.

open_clip needs torchvision, which is why it is an extra (``pip install 'libra-cli[openclip]'``);
``libra_cli.checkpoint.tower`` creates the model, this module adapts it.
Hidden states are collected like transformers' ``output_hidden_states`` (embedding output first,
then every block), so ``mm_vision_select_layer`` means the same thing for every encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from libra_cli.errors import ModelLoadError
from libra_cli.images import ImageProcessorConfig
from libra_cli.model.encoders import VisionTower


class _Output:
    def __init__(self, hidden_states: tuple[torch.Tensor, ...]) -> None:
        self.hidden_states = hidden_states
        self.last_hidden_state = hidden_states[-1]


class OpenClipVisual(nn.Module):
    """Adapter giving a timm ViT trunk (open_clip ``TimmModel``) the HF vision-model interface."""

    def __init__(self, visual: nn.Module, image_size: int) -> None:
        super().__init__()
        self.visual = visual
        trunk = getattr(visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "blocks"):
            raise ModelLoadError("only open_clip towers with a timm ViT trunk (e.g. BiomedCLIP) are supported")
        patch = trunk.patch_embed.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
        self.config = type("Cfg", (), {"model_type": "open_clip", "hidden_size": trunk.embed_dim,
                                        "num_hidden_layers": len(trunk.blocks), "image_size": image_size,
                                        "patch_size": patch})()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = True, return_dict: bool = True) -> _Output:
        trunk = self.visual.trunk
        x = trunk.patch_embed(pixel_values)
        x = trunk._pos_embed(x)
        x = trunk.patch_drop(x) if hasattr(trunk, "patch_drop") else x
        x = trunk.norm_pre(x)
        states = [x]
        for blk in trunk.blocks:
            x = blk(x)
            states.append(x)
        return _Output(tuple(states))


def wrap_open_clip(model: Any, name: str, select_layer: Any, select_feature: str, dtype: torch.dtype = torch.float32,
                   device: Any = "cpu") -> VisionTower:
    """An open_clip model (``create_model_from_pretrained``) as a :class:`VisionTower` with its preprocessing."""
    size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, (tuple, list)) else model.visual.image_size)
    mean = getattr(model.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
    std = getattr(model.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
    proc = ImageProcessorConfig(size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3,
                                image_mean=tuple(mean), image_std=tuple(std))
    visual = OpenClipVisual(model.visual, size).to(dtype=dtype)
    visual.requires_grad_(False)
    visual.eval()
    return VisionTower(visual, proc, select_layer, select_feature, name=name).to(device)
