"""Log-probabilities of taken tokens and entropy, computed in row chunks.

`token_logprobs` never holds a full-vocabulary log-softmax for the whole batch: the forward pass
computes `logit[label] - logsumexp(logits)` chunk by chunk, and the backward pass rebuilds the
softmax one chunk at a time (`grad_logits = g * (onehot(label) - softmax)`). Autograd's plain
`log_softmax + gather` keeps a (B, T, V) float tensor alive until backward; this keeps none.
"""
from __future__ import annotations

import torch

DEFAULT_CHUNK_ROWS = 1024


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int):
        flat = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1)
        out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
        for a, b in _chunks(flat.shape[0], chunk_rows):
            rows = flat[a:b].float()
            picked = rows.gather(-1, flat_labels[a:b].clamp_min(0).unsqueeze(-1)).squeeze(-1)
            out[a:b] = picked - torch.logsumexp(rows, dim=-1)
        ctx.save_for_backward(logits, labels)
        ctx.chunk_rows = chunk_rows
        return out.view(labels.shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, labels = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])
        flat_labels = labels.reshape(-1).clamp_min(0)
        g = grad_out.reshape(-1)
        grad = torch.empty_like(flat)
        for a, b in _chunks(flat.shape[0], ctx.chunk_rows):
            probs = torch.softmax(flat[a:b].float(), dim=-1)
            probs.mul_(-g[a:b].unsqueeze(-1))
            probs.scatter_add_(-1, flat_labels[a:b].unsqueeze(-1), g[a:b].unsqueeze(-1))
            grad[a:b] = probs.to(grad.dtype)
        return grad.view_as(logits), None, None


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """log p(labels) under `logits`. logits: (..., V), labels: (...) int64 -> (...) float32.

    Labels < 0 (ignore positions) are evaluated at token 0; mask them out downstream.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    return _TokenLogprobs.apply(logits, labels, chunk_rows)


def naive_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reference implementation: full log-softmax then gather."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """Entropy of softmax(logits) per position, chunked over rows. (..., V) -> (...)."""
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for a, b in _chunks(flat.shape[0], chunk_rows):
        rows = flat[a:b].float()
        logp = torch.log_softmax(rows, dim=-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(parts).view(logits.shape[:-1])
