"""Per-token log-probabilities without materialising `[N, T, vocab]` logits.

`token_logprobs(hidden, weight, targets)` equals
`log_softmax(hidden @ weight.T / temperature).gather(targets)` but walks the tokens in
chunks: the forward keeps only each token's logsumexp, and the backward recomputes one
chunk of logits at a time into a single float32 weight-gradient buffer. With Qwen3's
151,936-token vocabulary the full-logits path needs ~4.9 GB of float32 logits (plus as
much again for their softmax and gradient) for 8 × 512 tokens; this needs one chunk.

Pure torch; no transformers (or pydantic) import.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gspo_cli.base.constants import LOGPROB_CHUNK_TOKENS


class _ChunkedLinearLogProbs(torch.autograd.Function):
    """log p(target) of a linear head + log-softmax, chunked over tokens."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,  # [M, H]
        weight: Tensor,  # [V, H]
        targets: Tensor,  # [M] int64
        chunk: int,
        temperature: float,
    ) -> Tensor:
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 if given
        out = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)  # [M]
        peak = torch.empty_like(out)  # [M] max logit, kept apart from the rest of the
        lse = torch.empty_like(out)  # [M] logsumexp minus `peak`, so nothing cancels
        w = weight.to(dtype)  # [V, H]
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            # One [c, V] buffer per chunk: every step after the matmul is in place.
            logits = (hidden[rows].to(dtype) @ w.T).div_(temperature)  # [c, V]
            peak[rows] = logits.max(dim=-1).values  # [c]
            shifted = logits.sub_(peak[rows, None])  # [c, V]
            target = shifted.gather(1, targets[rows, None]).squeeze(1)  # [c]
            lse[rows] = shifted.exp_().sum(dim=-1).log_()  # [c]
            out[rows] = target - lse[rows]  # [c]
        ctx.save_for_backward(hidden, weight, targets, peak, lse)
        ctx.chunk, ctx.temperature = chunk, temperature
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, targets, peak, lse = ctx.saved_tensors
        chunk, temperature = ctx.chunk, ctx.temperature
        w = weight.to(lse.dtype)  # [V, H]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None  # [M, H]
        grad_weight = torch.zeros_like(w) if ctx.needs_input_grad[1] else None  # [V, H] >= fp32
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows].to(lse.dtype)  # [c, H]
            # d logp(target) / d logits = onehot(target) - softmax, times the upstream grad;
            # built in one [c, V] buffer.
            grad_logits = (h @ w.T).div_(temperature)  # [c, V] logits
            grad_logits.sub_((peak[rows] + lse[rows])[:, None]).exp_()  # [c, V] softmax
            upstream = grad_out[rows, None].to(lse.dtype)  # [c, 1]
            grad_logits.mul_(-upstream).scatter_add_(1, targets[rows, None], upstream)
            grad_logits.div_(temperature)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)  # [c, H]
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T, h)  # [V, H] += [V, c] @ [c, H]
        grad_w = grad_weight.to(weight.dtype) if grad_weight is not None else None
        return grad_hidden, grad_w, None, None, None


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
) -> Tensor:
    """log softmax(hidden @ weight.T / temperature)[targets], in float32 (float64 if given).

    hidden `[..., H]`, weight `[V, H]` (a bias-free output head), targets `[...]` -> `[...]`.
    `chunk_tokens` bounds how many tokens' logits exist at once; 0 means all at once.
    """
    shape = targets.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # [M, H]
    flat_targets = targets.reshape(-1)  # [M]
    chunk = chunk_tokens if chunk_tokens > 0 else max(flat_targets.numel(), 1)
    apply: Any = _ChunkedLinearLogProbs.apply
    out: Tensor = apply(flat_hidden, weight, flat_targets, chunk, temperature)  # [M]
    return out.reshape(shape)
