"""The two token streams of CCD (original prompt, guided prompt), each with its own KV cache, in one batch.

Row ``2j`` holds study ``j``'s original stream and row ``2j + 1`` its guided stream, so one forward
per step advances both streams of every study (one ``2B``-row forward costs far less than two
``B``-row forwards: a decode step is bound by reading the weights). The two prompts of a study
differ only after the question, so the common prefix (system prompt, image features, question) is
run once and its cache copied to both rows. Rows are left-padded per phase; position ids count
real tokens only, so each row sees exactly the positions of its unpadded sequence.
"""

from __future__ import annotations

from typing import Any

import torch

from libra_cli.model.modeling import cache_kwarg
from libra_cli.prompts import IMAGE_TOKEN_INDEX


def shared_prefix(a: list[int], b: list[int], image_token: int = IMAGE_TOKEN_INDEX) -> int:
    """Tokens both prompts start with that may share one cache: all image slots inside, one token left each."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    n = min(n, len(a) - 1, len(b) - 1)
    slots = [i for i, t in enumerate(a) if t == image_token]
    if slots and n <= slots[-1]:
        return 0  # the image would straddle the boundary: no sharing for this study
    return max(n, 0)


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


class Streams:
    """KV caches and attention masks of both streams of the active studies."""

    def __init__(self, model: Any, pad_id: int) -> None:
        from transformers import DynamicCache

        self.model = model
        self.pad_id = pad_id
        self.device = model.get_input_embeddings().weight.device
        self.cache = DynamicCache()
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.pos = torch.zeros(0, dtype=torch.long, device=self.device)
        self.cache_kw = cache_kwarg(model)
        self.image_token = int(model.config.image_token_id)

    def _forward(self, embeds: torch.Tensor | None, ids: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, inputs_embeds=embeds, attention_mask=self.mask, position_ids=pos,
                         use_cache=True, logits_to_keep=1, **{self.cache_kw: self.cache})
        return out.logits[:, -1]

    def prefill(self, orig: list[list[int]], guided: list[list[int]], features: torch.Tensor | None) -> torch.Tensor:
        """Run both prompts of every study; returns the next-token logits ``[2B, V]`` (rows interleaved).

        ``features`` ``[B, P, H]`` fill the image slots of study ``i`` (rows ``2i``, ``2i + 1``).
        """
        model, dev = self.model, self.device
        shared = [shared_prefix(a, b, self.image_token) for a, b in zip(orig, guided, strict=True)]
        n = len(orig)
        with_prefix = [i for i in range(n) if shared[i] > 0]
        if with_prefix:  # phase A: the common prefix, once per study
            ids, mask = _left_pad([orig[i][: shared[i]] for i in range(n)], self.pad_id)
            self.mask = mask.to(dev)
            pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
            feats = _features(features, [i for i in with_prefix if self.image_token in orig[i][: shared[i]]], 1)
            self._forward(model.embed_multimodal(ids.to(dev), feats), None, pos)
            self.cache.reorder_cache(torch.arange(n, device=dev).repeat_interleave(2))
            self.mask = self.mask.repeat_interleave(2, dim=0)
        # phase B: what differs (the guidance and the assistant turn), both rows of every study
        rows = [seq[shared[i]:] for i in range(n) for seq in (orig[i], guided[i])]
        ids, mask = _left_pad(rows, self.pad_id)
        mask = mask.to(dev)
        base = torch.tensor(shared, dtype=torch.long, device=dev).repeat_interleave(2)
        pos = (base[:, None] + mask.cumsum(-1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, mask], dim=1) if self.mask.numel() else mask
        feats = _features(features, [i for i in range(n) if shared[i] == 0 and self.image_token in orig[i]], 2)
        logits = self._forward(model.embed_multimodal(ids.to(dev), feats), None, pos)
        self.pos = self.mask.sum(-1)
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per study to both of its streams; returns the next logits ``[2n, V]``."""
        ids = tokens.to(self.device).repeat_interleave(2)[:, None]
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], 1))], dim=1)
        logits = self._forward(None, ids, self.pos[:, None])
        self.pos = self.pos + 1
        return logits

    def select(self, studies: torch.Tensor) -> None:
        """Keep (or repeat, or reorder) studies: row pairs follow ``studies`` (indices into the current ones)."""
        studies = studies.to(self.device)
        rows = torch.stack([2 * studies, 2 * studies + 1], dim=1).reshape(-1)
        self.cache.reorder_cache(rows)
        self.mask = self.mask[rows]
        self.pos = self.pos[rows]


def _features(features: torch.Tensor | None, studies: list[int], repeat: int) -> torch.Tensor | None:
    """The image features of ``studies``, each ``repeat`` times, in row order (None when no row has slots)."""
    if features is None or not studies:
        return None
    return features[torch.tensor(studies, device=features.device).repeat_interleave(repeat)]
