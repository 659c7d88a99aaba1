"""The transformers judge engine: batched greedy generation, the shared instruction prefix prefilled once.

Rows are grouped by their generation request and sorted by length, so a batch pads little. In a
full-attention model (Llama, Phi) the token prefix every prompt of a batch shares (the judge's
instructions before the reports) is run once; its KV cache is copied into each batch, whose rows then
hold ``prefix + padding + own tokens`` (positions from the attention mask, as transformers counts
them). Models with sliding-window layers (Gemma 3) run the plain batch: their windowed caches cannot
be continued past a copied prefix, and CRIMSON's shared prefix is only its short objective.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from libra_cli.metrics.judges.base import GenRequest, cut_at_stop

MIN_SHARED = 16  # shorter common prefixes are not worth a separate prefill


def _sliding(config: Any) -> bool:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "sliding_window", None)) or "sliding_attention" in (getattr(text, "layer_types", None) or [])


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all ``rows`` share, leaving each row at least one token of its own."""
    first = rows[0]
    n = min(len(r) for r in rows) - 1
    for i in range(max(n, 0)):
        t = first[i]
        if any(r[i] != t for r in rows):
            return i
    return max(n, 0)


class HfGenerator:
    """A causal LM in transformers, loaded once."""

    name = "hf"

    def __init__(self, folder: str, dtype: str, device: str | None = None, batch_size: int = 8,
                 share_prefix: bool = True) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=self.dtype).to(self.device).eval()
        self.batch_size = batch_size
        self.share_prefix = share_prefix and not _sliding(self.model.config)
        self.prefill_tokens_saved = 0

    def generate(self, prompts: Sequence[Sequence[int]], requests: Sequence[GenRequest]) -> list[list[int]]:
        """Generated ids per prompt (stop token included), in the order given."""
        order = sorted(range(len(prompts)), key=lambda i: (requests[i].key(), len(prompts[i])))
        out: dict[int, list[int]] = {}
        start = 0
        while start < len(order):
            key = requests[order[start]].key()
            batch = [order[start]]
            while len(batch) < self.batch_size and start + len(batch) < len(order) and \
                    requests[order[start + len(batch)]].key() == key:
                batch.append(order[start + len(batch)])
            start += len(batch)
            rows = self._batch([prompts[i] for i in batch], requests[batch[0]])
            for i, row in zip(batch, rows, strict=True):
                out[i] = cut_at_stop(row, requests[i])
        return [out[i] for i in range(len(prompts))]

    def _batch(self, rows: Sequence[Sequence[int]], req: GenRequest) -> list[list[int]]:
        import torch
        from transformers import GenerationConfig

        eos = list(req.eos)
        pad = eos[0] if eos else 0
        shared = common_prefix(rows) if self.share_prefix and len(rows) > 1 else 0
        if shared < MIN_SHARED:
            shared = 0
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):  # prefix, then padding, then the row's own tokens
            own = list(r[shared:])
            ids[j, :shared] = torch.tensor(list(r[:shared]), dtype=torch.long)
            ids[j, width - len(own):] = torch.tensor(own, dtype=torch.long)
            mask[j, :shared] = 1
            mask[j, width - len(own):] = 1
        kw: dict[str, Any] = {"max_new_tokens": req.max_new_tokens, "do_sample": req.do_sample,
                              "eos_token_id": eos or None, "pad_token_id": pad}
        if not eos:  # no stop token: exactly max_new_tokens (the model's own eos would otherwise fill in)
            kw["min_new_tokens"] = req.max_new_tokens
        if req.do_sample:
            kw.update(temperature=req.temperature, top_k=req.top_k, top_p=req.top_p)
        else:
            kw.update(temperature=None, top_k=None, top_p=None)
        config = GenerationConfig(**kw)
        extra: dict[str, Any] = {}
        with torch.inference_mode():
            if shared:
                extra[self._cache_kw()] = self._prefix_cache(list(rows[0][:shared]), len(rows))
                self.prefill_tokens_saved += shared * (len(rows) - 1)
            gen = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config, **extra)
        return [g.tolist() for g in gen[:, width:].cpu()]

    def _cache_kw(self) -> str:
        """``cache`` since transformers 5.20, ``past_key_values`` before (the vLLM venv pins 5.19)."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _prefix_cache(self, prefix: list[int], n: int) -> Any:
        """The prefix's KV cache, computed once per distinct prefix and copied ``n`` times."""
        import torch

        cached = getattr(self, "_prefix", None)
        if cached is None or cached[0] != prefix:
            ids = torch.tensor([prefix], dtype=torch.long, device=self.device)
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
            past = getattr(out, "cache", None) or out.past_key_values
            self._prefix = (prefix, past)
        cache = copy.deepcopy(self._prefix[1])
        cache.batch_repeat_interleave(n)
        return cache

    def close(self) -> None:
        self.model = None
