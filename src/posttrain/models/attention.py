"""Scaled-dot-product attention for grouped-query models on CPU without copying the KV cache.

Transformers' ``sdpa`` attention expands the key/value heads of a grouped-query model (SmolLM2: 9
query heads over 3 KV heads) to one copy per query head whenever an attention mask is given, which
is every padded batch and every decode step of a left-padded rollout. During decoding that copy is
the whole KV cache, every layer, every token: with SmolLM2 at batch 64 and 400 cached tokens it
took 62% of an evaluation's time. On CPU, torch's SDPA takes the grouped layout itself
(``enable_gqa=True``) with a mask, exactly (the same kernel arithmetic), so ``posttrain_sdpa`` passes
the grouped tensors straight through there. Everything else (no mask, no grouping, other devices,
where the masked grouped path would fall back to a slow kernel) goes to transformers' own ``sdpa``.

Models loaded by `posttrain.models` use it; ``attn_implementation="posttrain_sdpa"`` after
`register()` selects it for any other model.
"""
from __future__ import annotations

import torch

NAME = "posttrain_sdpa"


def gqa_sdpa_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                               scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    grouped = getattr(module, "num_key_value_groups", 1) > 1
    plain = kwargs.get("position_bias") is None and kwargs.get("cache") is None and not kwargs.get("output_attentions")
    if not (grouped and plain and attention_mask is not None and query.device.type == "cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``posttrain_sdpa`` a valid ``attn_implementation`` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, gqa_sdpa_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
