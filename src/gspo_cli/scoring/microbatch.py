"""Token-budget micro-batches: split rows so each forward pass holds at most `budget`
(padded) tokens, longest rows together so little of what we compute is padding.

Rows are laid out as in `sampling.Generation`: a left-padded prompt of P columns followed by a
right-padded completion. A micro-batch keeps only the columns its own rows need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Rows(Protocol):
    """Prompts and completions laid out as in `sampling.Generation`."""

    @property
    def input_ids(self) -> torch.Tensor: ...  # [N, P+T]
    @property
    def attention_mask(self) -> torch.Tensor: ...  # [N, P+T]
    @property
    def completion_mask(self) -> torch.Tensor: ...  # [N, T]


@dataclass(frozen=True)
class MicroBatch:
    positions: Tensor  # [n] positions within the planned rows (to scatter results back)
    rows: Tensor  # [n] row indices into the full batch
    start: int  # first column kept: the longest prompt's first real token
    completion_len: int  # completion columns kept: the longest completion


def plan(
    attention_mask: Tensor,  # [N, P+T] 1 on real prompt and completion tokens
    completion_mask: Tensor,  # [N, T]
    rows: Tensor,  # [n] which rows of the batch to plan
    budget: int,  # max padded tokens per micro-batch; 0 = one micro-batch
) -> list[MicroBatch]:
    """Micro-batches covering `rows` exactly once, longest first, each within `budget`
    padded tokens (a single row longer than the budget gets a micro-batch of its own)."""
    t = completion_mask.shape[1]
    p = attention_mask.shape[1] - t
    prompt_lens = attention_mask[rows, :p].sum(dim=1)  # [n]
    completion_lens = completion_mask[rows].sum(dim=1).long().clamp(min=1)  # [n]
    order = torch.argsort(prompt_lens + completion_lens, descending=True, stable=True)  # [n]
    batches: list[MicroBatch] = []
    current: list[int] = []
    widest_prompt = widest_completion = 0

    def close() -> None:
        positions = torch.tensor(current, dtype=torch.long)
        batches.append(MicroBatch(positions, rows[positions], p - widest_prompt, widest_completion))

    for pos in order.tolist():
        wp = max(widest_prompt, int(prompt_lens[pos]))
        wc = max(widest_completion, int(completion_lens[pos]))
        if current and budget > 0 and (len(current) + 1) * (wp + wc) > budget:
            close()
            current, wp, wc = [], int(prompt_lens[pos]), int(completion_lens[pos])
        current.append(pos)
        widest_prompt, widest_completion = wp, wc
    if current:
        close()
    return batches


def take(tensor: Tensor, mb: MicroBatch, prompt_len: int) -> Tensor:
    """The micro-batch's rows and columns of a `[N, P+T]` tensor."""
    return tensor[mb.rows, mb.start : prompt_len + mb.completion_len]
