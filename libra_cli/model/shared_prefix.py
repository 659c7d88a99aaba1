"""Beam search that keeps the prompt's KV cache once per sample instead of once per beam.

transformers' beam search copies every input ``num_beams`` times before the prefill, so a
1,400-token image prompt is prefilled 10 times, held 10 times in the KV cache (7B: ~7 GB per
sample at 10 beams) and re-gathered (``index_select`` over the whole cache) at every step. Here:

1. the prompt minus its last token is prefilled once, at batch B (:func:`prefill_prefix`);
2. :class:`SharedPrefixCache` keeps that prefix per sample and only the generated tokens per
   beam; beam reordering moves only those (beams never move between samples);
3. :func:`shared_prefix_attention` attends each beam's query to its sample's prefix (all beams
   of a sample in one matmul, so the prefix is read once per step) and to its own suffix, with
   one softmax over both, as ``eager`` attention computes it.

transformers' own generate loop runs the search (scores, length penalty, n-gram blocking), so
the search itself is unchanged; only where the keys and values live differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

ATTN_NAME = "libra_shared_prefix"


class SharedPrefixCache(DynamicCache):
    """A prefilled prompt per sample (``[B, Hkv, P, D]`` per layer) + generated tokens per beam.

    The inherited :class:`DynamicCache` layers hold the per-beam part; ``get_seq_length`` counts
    both, so transformers' generate sees a cache holding the prompt.
    """

    def __init__(self, prefix: DynamicCache, prefix_mask: torch.Tensor, config: Any) -> None:
        super().__init__(config=config)
        self.prefix_keys = [layer.keys for layer in prefix.layers]
        self.prefix_values = [layer.values for layer in prefix.layers]
        self.prefix_mask = prefix_mask.bool()  # [B, P]: False where left padding is
        self.prefix_pad = ~self.prefix_mask[:, None, None, :]  # built once, not per layer and step
        self.prefix_len = int(prefix_mask.shape[1])

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix_len + super().get_seq_length(layer_idx)

    def prefix_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.prefix_keys + self.prefix_values)


def prefill_prefix(model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> SharedPrefixCache:
    """Run the prompt minus its last token once per sample; positions as transformers' generate computes them."""
    pos = attention_mask.long().cumsum(-1) - 1
    pos = pos.masked_fill(attention_mask == 0, 0)
    out = model(inputs_embeds=inputs_embeds[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=pos[:, :-1],
                use_cache=True, logits_to_keep=1)
    past = getattr(out, "cache", None) or out.past_key_values  # transformers >= 5.20 renamed it
    return SharedPrefixCache(past, attention_mask[:, :-1], model.config)



def shared_prefix_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention of ``query`` ``[B*beams, H, q, D]`` over its sample's prefix and its own generated keys.

    ``key``/``value`` are the per-beam part ``[B*beams, Hkv, T, D]`` (the cache's ``update`` result);
    the prefix comes from the :class:`SharedPrefixCache` passed as ``shared_prefix``. Returns
    ``[B*beams, q, H, D]`` like the other attention functions.
    """
    cache: SharedPrefixCache = kwargs["shared_prefix"]
    pk, pv = cache.prefix_keys[module.layer_idx], cache.prefix_values[module.layer_idx]
    b, hkv, p, d = pk.shape
    n, h, q, _ = query.shape
    beams, g, t = n // b, h // hkv, key.shape[2]
    scaling = scaling if scaling is not None else d**-0.5
    # prefix: every beam (and every query head of a kv head) of a sample in one matmul -> read once
    qp = query.view(b, beams, hkv, g, q, d).permute(0, 2, 1, 3, 4, 5).reshape(b, hkv, beams * g * q, d)
    sp = torch.matmul(qp, pk.transpose(-1, -2)) * scaling
    sp = sp.masked_fill(cache.prefix_pad.to(sp.device), float("-inf"))  # .to: layers on other GPUs (device_map)
    sp = sp.view(b, hkv, beams, g, q, p).permute(0, 2, 1, 3, 4, 5).reshape(n, h, q, p)
    # generated part: per beam (keys repeated over the query heads of their kv head)
    ks = key[:, :, None].expand(n, hkv, g, t, d).reshape(n, h, t, d)
    vs = value[:, :, None].expand(n, hkv, g, t, d).reshape(n, h, t, d)
    ss = torch.matmul(query, ks.transpose(-1, -2)) * scaling
    if q > 1:  # causal among the new tokens
        causal = torch.ones(q, t, dtype=torch.bool, device=query.device).tril(t - q)
        ss = ss.masked_fill(~causal, float("-inf"))
    probs = torch.softmax(torch.cat([sp, ss], dim=-1), dim=-1, dtype=torch.float32).to(query.dtype)
    pp, ps = probs.split([p, t], dim=-1)
    pp = pp.reshape(b, beams, hkv, g, q, p).permute(0, 2, 1, 3, 4, 5).reshape(b, hkv, beams * g * q, p)
    out_p = torch.matmul(pp, pv).view(b, hkv, beams, g, q, d).permute(0, 2, 1, 3, 4, 5).reshape(n, h, q, d)
    out = out_p + torch.matmul(ps, vs)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """The shared-prefix attention builds its own masks (prefix padding + causal among new tokens)."""
    return None


AttentionInterface.register(ATTN_NAME, shared_prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, _no_mask)


def supported(model: Any) -> bool:
    """Full-attention decoder stacks (no sliding window, no soft-capping: Gemma is left out).

    The prefill runs with the model's own attention (sdpa, eager or flash-attention 2); only the
    decode steps go through :func:`shared_prefix_attention`.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    return impl in ("sdpa", "eager", "flash_attention_2") and getattr(model.config, "sliding_window", None) in (None, 0) \
        and model.config.model_type in ("libra", "libra_mistral", "libra_qwen2", "libra_qwen3", "libra_phi3")


@contextmanager
def attention(model: Any) -> Iterator[None]:
    """Route the model's attention through :func:`shared_prefix_attention` for one generate call."""
    configs = {id(c): c for c in (model.config, model.config.get_text_config(decoder=True))}
    saved = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = ATTN_NAME
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = saved[k]
