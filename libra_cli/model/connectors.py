"""Connectors that map encoder features to LLM embeddings (docs/reference-format.md#connectors).

Parameter names are part of the checkpoint format: they are kept exactly as the original
(including the ``cros_attention`` spelling). Plain torch only (no torchvision).
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from libra_cli.errors import InputError

TAC_LAYERS = 12  # TAC's layer-wise extractor is sized for RAD-DINO's 12 layers


class SqueezeExcitation(nn.Module):
    """Channel re-weighting: spatial mean -> 1x1 conv -> GELU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = torch.sigmoid(self.fc2(self.activation(self.fc1(scale))))
        return x * scale


class TAC(nn.Module):
    """Temporal Alignment Connector: fuses current and prior image features into LLM tokens."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        d, h = mm_hidden_size, hidden_size
        self.LFE = nn.Sequential(
            SqueezeExcitation(12, 6),
            nn.Conv2d(12, 6, 1, bias=False),
            SqueezeExcitation(6, 3),
            nn.Conv2d(6, 3, 1, bias=False),
            SqueezeExcitation(3, 1),
            nn.Conv2d(3, 1, 1, bias=False),
        )
        self.LFE_prior_bias = nn.Parameter(torch.tensor(0.0))
        self.cur_self_attention = nn.MultiheadAttention(d, num_heads, batch_first=True, add_bias_kv=True)
        self.prior_self_attention = nn.MultiheadAttention(d, num_heads, batch_first=True, add_bias_kv=True)
        self.cros_attention = nn.MultiheadAttention(d, num_heads, batch_first=True, add_bias_kv=True)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.norm4 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)
        self.mlp_attn = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d), nn.Dropout(dropout))
        self.mlp_final = nn.Sequential(
            nn.Linear(d, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, h)
        )

    def prior_weight(self, cur: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """((cos + 1) / 2) ** 8 of the flattened, L2-normalised features: near 1 when the prior is the same image."""
        c = F.normalize(cur.flatten(1), dim=-1)
        p = F.normalize(prior.flatten(1), dim=-1)
        cos = F.cosine_similarity(c, p, dim=-1, eps=1e-6)
        return (((cos + 1) / 2) ** 8).view(-1, 1, 1)

    def forward(self, cur: torch.Tensor, prior: torch.Tensor | None) -> torch.Tensor:
        """``cur``/``prior``: ``[B, 12, P, D]`` -> ``[B, P, H]``."""
        if prior is None:
            prior = cur
        if cur.shape[1] != TAC_LAYERS:
            raise InputError(
                f"the TAC connector needs {TAC_LAYERS} encoder layers (mm_vision_select_layer 'all'), got {cur.shape[1]}"
            )
        c = self.LFE(cur).squeeze(1)
        p = self.LFE(prior).squeeze(1)
        p = p + self.prior_weight(c, p) * self.LFE_prior_bias
        c1 = self.norm1(c + self.dropout(self.cur_self_attention(c, c, c, need_weights=False)[0]))
        p1 = self.norm2(p + self.dropout(self.prior_self_attention(p, p, p, need_weights=False)[0]))
        x = self.norm3(c1 + self.dropout(self.cros_attention(c1, p1, p1, need_weights=False)[0]))
        return self.mlp_final(self.norm4(c + self.mlp_attn(x)))


class Projector(nn.Module):
    """``linear`` / ``mlp{N}x_gelu``: current image only. Keys ``projector.N.*`` as in the Libra code."""

    def __init__(self, mm_hidden_size: int, hidden_size: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        self.projector = nn.Sequential(*layers)

    def forward(self, cur: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """``cur``: ``[B, L, P, D]``; the last selected layer is projected -> ``[B, P, H]``."""
        return self.projector(cur[:, -1])


_MLP_RE = re.compile(r"^mlp(\d+)x_gelu$")


PRIOR_CONNECTORS = frozenset({"TAC"})  # connectors that compare the current image with the prior


def uses_prior(config: Any) -> bool:
    """Whether the connector a config names takes the prior image (the one place every engine asks)."""
    return str(getattr(config, "mm_projector_type", "") or "") in PRIOR_CONNECTORS


def build_connector(config: Any) -> nn.Module:
    """Build the connector named by ``config.mm_projector_type``."""
    kind = getattr(config, "mm_projector_type", "linear") or "linear"
    d = int(config.mm_hidden_size)
    h = int(config.hidden_size)
    if kind == "TAC":
        return TAC(d, h, int(config.num_attention_heads))
    if kind == "linear":
        return Projector(d, h, 1)
    m = _MLP_RE.match(kind)
    if m:
        return Projector(d, h, int(m.group(1)))
    raise InputError(f"unknown mm_projector_type {kind!r} in config.json; expected TAC, linear or mlpNx_gelu")
