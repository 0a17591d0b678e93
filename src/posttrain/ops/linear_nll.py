"""Summed next-token NLL straight from hidden states: LM-head matmul + log-softmax, fused and chunked.

``linear_nll_sum(hidden, weight, labels)`` equals ``-token_logprobs(F.linear(hidden, weight).float(),
labels).sum()`` (to float rounding), but the (N, V) logits never exist whole: rows are processed
``chunk_rows`` at a time. Because the output is one scalar, the gradient of the sum with respect to
each chunk's logits (``softmax - onehot(label)``) is known in the forward pass already, so each chunk
is used at once for the two gradient matmuls (``grad_hidden = G @ W``, ``grad_weight += G^T @ hidden``)
and dropped; the backward pass only scales the stored gradients by the incoming scalar gradient.
The head costs exactly its three matmuls (no recomputation of the logits) and
(chunk_rows x V) floats of temporary memory instead of (N x V) logits plus their gradient.

Without gradients (``torch.no_grad()`` or inputs that need none) only the forward is computed.

Numerics: the matmuls run in `compute_dtype` (default: the weight's dtype; pass the autocast dtype
to reproduce an autocast forward, e.g. bf16), logits and the softmax in fp32, the weight gradient
accumulates in fp32 and is returned in the weight's dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CHUNK_ROWS = 1024


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _chunk_logits(x, w, b):
    """fp32 logits of one chunk, shifted by the row max (in place): (shifted logits, row max)."""
    logits = F.linear(x, w, b)
    logits = logits.float() if logits.dtype != torch.float32 else logits
    mx = logits.amax(dim=-1, keepdim=True)
    return logits.sub_(mx), mx


def _forward(hidden, weight, bias, labels, chunk_rows, compute_dtype, with_grad):
    with torch.autocast(hidden.device.type, enabled=False):  # the dtypes are explicit here
        return _forward_body(hidden, weight, bias, labels, chunk_rows, compute_dtype, with_grad)


def _forward_body(hidden, weight, bias, labels, chunk_rows, compute_dtype, with_grad):
    n = hidden.shape[0]
    x_all = hidden if hidden.dtype == compute_dtype else hidden.to(compute_dtype)
    w = weight if weight.dtype == compute_dtype else weight.to(compute_dtype)
    b = None if bias is None else (bias if bias.dtype == compute_dtype else bias.to(compute_dtype))
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    gx = gw = gb = None
    if with_grad[0]:
        gx = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    if with_grad[1]:
        gw = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    if with_grad[2]:
        gb = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
    any_grad = gx is not None or gw is not None or gb is not None
    for a, e in _chunks(n, chunk_rows):
        x = x_all[a:e]
        lab = labels[a:e].unsqueeze(-1)
        z, mx = _chunk_logits(x, w, b)  # z = logits - max
        picked = z.gather(-1, lab)
        z.exp_()
        s = z.sum(dim=-1, keepdim=True)
        total += (s.log() - picked).sum()  # nll = logsumexp - logit[label] = log(sum exp z) - z[label]
        if not any_grad:
            continue
        z.div_(s)  # softmax
        z.scatter_add_(-1, lab, torch.full_like(picked, -1.0))  # d(sum nll)/d logits = softmax - onehot
        g = z if compute_dtype == torch.float32 else z.to(compute_dtype)
        if gx is not None:
            gx[a:e] = g @ w
        if gw is not None:
            if g.dtype == torch.float32 and x.dtype == torch.float32:
                gw.addmm_(g.t(), x)
            else:
                gw += (g.t() @ x).float()
        if gb is not None:
            gb += z.sum(0)
    return total, gx, gw, gb


class _LinearNLLSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk_rows, compute_dtype):
        with_grad = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        total, gx, gw, gb = _forward(hidden, weight, bias, labels, chunk_rows, compute_dtype, with_grad)
        ctx.grads = (gx, gw, gb)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("linear_nll_sum: backward called twice (its gradients are computed once, in the forward pass)")
        gx, gw, gb = ctx.grads
        ctx.grads = None  # free them as soon as they are handed over
        wdt, bdt = ctx.dtypes
        gx = None if gx is None else gx.mul_(grad_out.to(gx.dtype))
        gw = None if gw is None else gw.mul_(grad_out).to(wdt)
        gb = None if gb is None else gb.mul_(grad_out).to(bdt)
        return gx, gw, gb, None, None, None


def linear_nll_sum(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, bias: torch.Tensor | None = None,
    *, chunk_rows: int = DEFAULT_CHUNK_ROWS, compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Sum over rows of ``-log softmax(hidden @ weight.T + bias)[label]``, a 0-dim fp32 tensor.

    hidden: (N, d); weight: (V, d); bias: (V,) or None; labels: (N,) int64 in [0, V) (select the
    trained positions before calling: there is no ignore index). Differentiable in hidden, weight and
    bias; the gradients are computed during the forward pass (see the module docstring), so call
    ``backward`` through it once.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} disagree")
    if labels.shape != hidden.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} and hidden {tuple(hidden.shape)} disagree")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(f"labels must lie in [0, {weight.shape[0]}): select the trained positions first")
    dtype = compute_dtype or weight.dtype
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        with torch.no_grad():
            return _forward(hidden, weight, bias, labels, chunk_rows, dtype, (False, False, False))[0]
    return _LinearNLLSum.apply(hidden, weight, bias, labels, chunk_rows, dtype)
