"""A padding-free training forward for Llama-family decoders: every real token once, no pad positions.

A packed SFT micro-batch is a (rows x T) rectangle, padded to its longest row; with GSM8K-sized
examples (most longer than half a row, so packing rarely puts two in a row) 18% of the positions
were padding, and the decoder's matmuls, norms and MLP ran on all of them. Here the kept tokens are
laid out as one (1, N) sequence of segments and every layer runs on those N tokens only; attention
stays within each segment (causal), so the result equals the padded forward to float rounding.

The segments are the ones the Hugging Face forward attends within:
- without an attention mask (packed rows), a new segment starts wherever ``position_ids`` does not
  continue by +1 (transformers' `find_packed_sequence_indices`); a segment with no trained label
  (the tail padding of a packed row) is dropped, which changes nothing else, since no other token
  attends to it;
- with an attention mask, each row's unmasked tokens form one causal segment (the masked query
  positions must carry no label, else `unpadded_layout` declines).

The layer arithmetic is the Hugging Face one, module by module (embedding, rotary embedding, RMSNorm,
q/k/v/o and MLP modules, the model's own `apply_rotary_pos_emb`, SDPA with the module's scaling), so
LoRA-wrapped projections work unchanged. The attention call differs: segments of equal length
are stacked into one causal SDPA call (no mask tensor). And in fp32 (no autocast), a plain RMSNorm
and a plain SiLU-gated MLP (unwrapped bias-free ``nn.Linear`` projections) run as autograd Functions
with the same forward arithmetic that keep less for the backward pass: the norm keeps its input and
1/rms (not also the normalized copy), the MLP keeps gate and up (not also silu(gate) and the
product, which its backward recomputes: elementwise work, no matmul). Per token and layer that is
4,224 fewer fp32 values kept (SmolLM2: 11,712 -> 7,488), the largest share of a step's activation
memory. `supports_unpadded` admits plain Llama /
Qwen2 / Mistral decoders with full attention, no sliding window, no attention dropout while
training, no gradient checkpointing and no forward hooks on the modules whose forward this replaces.
"""
from __future__ import annotations

import dataclasses
import sys

import torch
import torch.nn.functional as F

_LAYERS = {"LlamaDecoderLayer", "Qwen2DecoderLayer", "MistralDecoderLayer"}
_ATTENTION = {"LlamaAttention", "Qwen2Attention", "MistralAttention"}


@dataclasses.dataclass
class Layout:
    index: torch.Tensor  # (N,) long: the kept positions of the flattened (B*T) batch, in row-major order
    segments: list[int]  # lengths of the causal segments, in order; they sum to N
    padded: int  # B*T, the positions of the padded layout


def supports_unpadded(decoder) -> bool:
    """Whether `unpadded_forward` reproduces `decoder`'s forward (see the module docstring)."""
    cfg = getattr(decoder, "config", None)
    layers = getattr(decoder, "layers", None)
    if cfg is None or layers is None or not all(hasattr(decoder, a) for a in ("embed_tokens", "rotary_emb", "norm")):
        return False
    if getattr(cfg, "use_sliding_window", False) or (getattr(cfg, "model_type", None) == "mistral" and getattr(cfg, "sliding_window", None)):
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ())):
        return False
    if getattr(decoder, "gradient_checkpointing", False) or _hooked(decoder):
        return False
    for layer in layers[: cfg.num_hidden_layers]:
        attn = getattr(layer, "self_attn", None)
        if type(layer).__name__ not in _LAYERS or type(attn).__name__ not in _ATTENTION:
            return False
        if getattr(layer, "gradient_checkpointing", False) or _hooked(layer) or _hooked(attn):
            return False
        if getattr(attn, "sliding_window", None) or (attn.training and attn.attention_dropout):
            return False
    return True


def _hooked(module) -> bool:  # forward hooks, or an accelerate hook (which replaces `forward`)
    return bool(module._forward_hooks or module._forward_pre_hooks) or hasattr(module, "_hf_hook")


def unpadded_layout(input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    labels: torch.Tensor, ignore_index: int = -100) -> Layout | None:
    """The kept tokens and their segments for a (B, T) batch (see the module docstring), or None
    when a masked position carries a label (the padded forward would score it)."""
    B, T = input_ids.shape
    labelled = labels != ignore_index
    if attention_mask is not None:
        keep = attention_mask.bool()
        if bool((labelled & ~keep).any()):
            return None
        keep = keep & labelled.any(-1, keepdim=True)  # a row with nothing to score is dropped whole
        counts = keep.sum(-1).tolist()
        return Layout(keep.flatten().nonzero().flatten(), [c for c in counts if c], B * T)
    first = position_ids[:, :1] - 1
    starts = torch.diff(position_ids, prepend=first, dim=-1) != 1
    starts[:, 0] = True
    seg_id = starts.flatten().cumsum(0) - 1  # segment of every position, row-major; rows never share one
    n_seg = int(seg_id[-1]) + 1
    has_label = torch.zeros(n_seg, dtype=torch.bool, device=labels.device).index_fill_(0, seg_id[labelled.flatten()], True)
    kept_pos = has_label[seg_id]
    lengths = torch.bincount(seg_id, minlength=n_seg)[has_label]
    return Layout(kept_pos.nonzero().flatten(), lengths.tolist(), B * T)


def _segment_attention(q, k, v, segments, scaling):
    """Causal SDPA within each segment of the token axis (dim 2) of (1, heads, N, D) tensors;
    segments of equal length go through one call, stacked on the batch axis."""
    starts, pos = [], 0
    for n in segments:
        starts.append(pos)
        pos += n
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(segments):
        by_len.setdefault(n, []).append(i)
    pieces: list[torch.Tensor | None] = [None] * len(segments)
    for n, idx in by_len.items():
        sl = [slice(starts[i], starts[i] + n) for i in idx]
        qs = torch.cat([q[:, :, s] for s in sl]) if len(sl) > 1 else q[:, :, sl[0]]
        ks = torch.cat([k[:, :, s] for s in sl]) if len(sl) > 1 else k[:, :, sl[0]]
        vs = torch.cat([v[:, :, s] for s in sl]) if len(sl) > 1 else v[:, :, sl[0]]
        out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=n > 1, scale=scaling,
                                             enable_gqa=qs.shape[1] != ks.shape[1])
        for j, i in enumerate(idx):
            pieces[i] = out[j : j + 1]
    return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]  # (1, H, N, D)


class _RMSNorm(torch.autograd.Function):
    """``weight * x / rms(x)`` in fp32, as `LlamaRMSNorm` computes it; keeps x and 1/rms."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, r, weight)
        return weight * (x * r)

    @staticmethod
    def backward(ctx, dy):
        x, r, weight = ctx.saved_tensors
        xhat = x * r
        dw = (dy * xhat).reshape(-1, xhat.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        dxh = dy * weight
        dx = r * (dxh - xhat * (dxh * xhat).mean(-1, keepdim=True))
        return dx, dw, None


class _SiluMLP(torch.autograd.Function):
    """``down(silu(gate(h)) * up(h))`` for bias-free weights; keeps gate and up, recomputes the rest."""

    @staticmethod
    def forward(ctx, h, wg, wu, wd):
        g, u = F.linear(h, wg), F.linear(h, wu)
        ctx.save_for_backward(h, g, u, wg, wu, wd)
        return F.linear(F.silu(g) * u, wd)

    @staticmethod
    def backward(ctx, dy):
        h, g, u, wg, wu, wd = ctx.saved_tensors
        need_h, need_g, need_u, need_d = ctx.needs_input_grad
        h2, dy2 = h.reshape(-1, h.shape[-1]), dy.reshape(-1, dy.shape[-1])
        a = F.silu(g).reshape(-1, g.shape[-1])
        g2, u2 = g.reshape(a.shape), u.reshape(a.shape)
        dwd = dy2.t() @ (a * u2) if need_d else None
        dp = dy2 @ wd
        du = dp * a
        del a
        dg = torch.ops.aten.silu_backward(dp.mul_(u2), g2)
        del dp
        dh = None
        if need_h:
            dh = (dg @ wg).addmm_(du, wu).view(h.shape)
        dwg = dg.t() @ h2 if need_g else None
        dwu = du.t() @ h2 if need_u else None
        return dh, dwg, dwu, dwd


_NORMS = {"LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm"}
_MLPS = {"LlamaMLP", "Qwen2MLP", "MistralMLP"}


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and m.bias is None and not _hooked(m)


def _norm(norm, x, lean):
    if lean and type(norm).__name__ in _NORMS and not _hooked(norm) and x.dtype == norm.weight.dtype == torch.float32:
        return _RMSNorm.apply(x, norm.weight, norm.variance_epsilon)
    return norm(x)


def _mlp(mlp, h, lean):
    if (lean and type(mlp).__name__ in _MLPS and not _hooked(mlp) and type(mlp.act_fn).__name__ in ("SiLUActivation", "SiLU")
            and all(_plain_linear(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj"))
            and h.dtype == mlp.gate_proj.weight.dtype == torch.float32):
        return _SiluMLP.apply(h, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    return mlp(h)


def _layer(layer, x, cos, sin, segments, rotary, lean):
    attn = layer.self_attn
    residual = x
    h = _norm(layer.input_layernorm, x, lean)
    shape = (*h.shape[:-1], -1, attn.head_dim)
    q = attn.q_proj(h).view(shape).transpose(1, 2)
    k = attn.k_proj(h).view(shape).transpose(1, 2)
    v = attn.v_proj(h).view(shape).transpose(1, 2)
    q, k = rotary(q, k, cos, sin)
    o = _segment_attention(q, k, v, segments, attn.scaling).transpose(1, 2).contiguous()
    x = residual + attn.o_proj(o.reshape(*h.shape[:-1], -1).contiguous())
    residual = x
    return residual + _mlp(layer.mlp, _norm(layer.post_attention_layernorm, x, lean), lean)


def unpadded_forward(decoder, input_ids: torch.Tensor, position_ids: torch.Tensor, segments: list[int]) -> torch.Tensor:
    """Final hidden states (N, d) of the (N,) tokens `input_ids` at `position_ids`, attending causally
    within consecutive `segments` (lengths summing to N). `decoder` must pass `supports_unpadded`."""
    ids, pos = input_ids.view(1, -1), position_ids.view(1, -1)
    x = decoder.embed_tokens(ids)
    cos, sin = decoder.rotary_emb(x, position_ids=pos)
    layers = decoder.layers[: decoder.config.num_hidden_layers]
    rotary = sys.modules[type(layers[0].self_attn).__module__].apply_rotary_pos_emb if len(layers) else None
    lean = not torch.is_autocast_enabled(x.device.type)  # the lean norm / MLP Functions are fp32-only
    for layer in layers:
        x = _layer(layer, x, cos, sin, segments, rotary, lean)
    return _norm(decoder.norm, x, lean)[0]
