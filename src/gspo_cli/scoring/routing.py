"""Mixture-of-experts routing: record the experts each token chose, measure how much that
choice drifts between π_old and the current policy, and replay π_old's choice.

Each MoE layer of a Qwen3-MoE model has a router (`model.layers[i].mlp.gate`, a
`Qwen3MoeTopKRouter`) whose forward returns `(logits [B·S, E], weights [B·S, k], indices
[B·S, k])` for the flattened `[B, S]` tokens of the pass. A forward hook on each router
reads the chosen indices (`RouterTap`); with `replay` it also swaps them for saved ones and
recomputes their weights from the live logits (softmax, gather, renormalise when the model
does), so the experts are π_old's while the router still gets gradients through the weights.
Nothing of transformers' model code is copied. With unchanged weights, replaying a pass's
own choice reproduces its output bit for bit.

Layouts: one pass's choice is `[B, S, L, k]` (rows, columns of the pass, MoE layers, top-k).
π_old's choice for the whole rollout batch is kept in the batch's own layout `[N, P+T, L, k]`
(the columns of `Generation.input_ids`), so any micro-batch's rows and columns slice out of
it; columns a π_old micro-batch never covered (left padding) hold `NO_EXPERT`, and a replayed
pass keeps the router's own choice there (padding never reaches a real token).

Router drift counts real completion tokens only (what the loss sees), across every MoE
layer: a (token, layer) position has drifted when its *set* of k experts differs (order
within the top-k does not matter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from gspo_cli.scoring import microbatch
from gspo_cli.scoring.microbatch import MicroBatch

NO_EXPERT = -1  # a (token, layer) slot with no recorded choice: keep the router's own
EXPERT_DTYPE = torch.int16  # expert indices are small; [N, P+T, L, k] stays compact


def find_routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every Qwen3-MoE router of `model` in layer order; empty for a dense model."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

    return [m for m in model.modules() if isinstance(m, Qwen3MoeTopKRouter)]


def routing_weights(logits: Tensor, indices: Tensor, normalise: bool) -> Tensor:
    """The weights a Qwen3-MoE router gives experts `indices` [B·S, k] from its `logits`
    [B·S, E]: their softmax probabilities, renormalised to sum to 1 when `normalise` (the
    config's `norm_topk_prob`). Differentiable in `logits`. With the router's own top-k
    indices this is exactly (bit for bit) the router's own arithmetic."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)  # [B·S, E]
    top = probs.gather(-1, indices)  # [B·S, k]
    if normalise:
        top = top / top.sum(dim=-1, keepdim=True)  # [B·S, k]
    return top.to(logits.dtype)


class RouterTap:
    """Forward hooks on a model's routers while the context is open.

    `experts(rows)` is the router's own choice in the last forward, `[rows, S, L, k]`. With
    `replay` (`[B, S, L, k]`, the pass's rows and columns; `NO_EXPERT` where the router
    should choose itself) the forward uses those experts instead, weighted from the live
    logits.
    """

    def __init__(self, routers: list[torch.nn.Module], replay: Tensor | None = None) -> None:
        self.routers = routers
        self.replay = replay
        self._chosen: list[Tensor | None] = [None] * len(routers)
        self._handles: list[Any] = []

    def __enter__(self) -> RouterTap:
        for layer, router in enumerate(self.routers):
            self._handles.append(router.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int) -> Callable[..., Any]:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> Any:
            logits, _, chosen = output  # [B·S, E], [B·S, k] weights, [B·S, k]
            self._chosen[layer] = chosen.detach()
            if self.replay is None:
                return None
            forced = self.replay[:, :, layer].reshape(chosen.shape)  # [B·S, k]
            forced = forced.to(device=chosen.device, dtype=chosen.dtype)
            indices = torch.where(forced == NO_EXPERT, chosen, forced)  # [B·S, k]
            normalise = bool(getattr(module, "norm_topk_prob", False))
            return logits, routing_weights(logits, indices, normalise), indices

        return hook

    def experts(self, rows: int) -> Tensor:
        """The routers' own choice in the last forward -> [rows, S, L, k] (`EXPERT_DTYPE`)."""
        if any(c is None for c in self._chosen):
            raise RuntimeError("no forward pass ran through every router under this tap")
        layers = [c.reshape(rows, -1, c.shape[-1]) for c in self._chosen if c is not None]
        return torch.stack(layers, dim=2).to(EXPERT_DTYPE)  # [rows, S, L, k]


def drift_counts(old: Tensor, new: Tensor, mask: Tensor) -> Tensor:
    """(drifted positions, positions, drifted tokens, tokens) as float64 `[4]`.

    `old`, `new`: expert indices `[B, S, L, k]`; `mask`: `[B, S]`, nonzero on the tokens to
    count. A (token, layer) position has drifted when its set of experts differs; a token
    when any of its layers has.
    """
    same_order_free = old.sort(dim=-1).values != new.sort(dim=-1).values  # [B, S, L, k]
    drifted = same_order_free.any(dim=-1)  # [B, S, L]; a top-k has no repeats: sets differ
    real = mask.bool()  # [B, S]
    layers = old.shape[2]
    return torch.tensor(
        [
            float(drifted[real].sum()),
            float(real.sum()) * layers,
            float(drifted.any(dim=-1)[real].sum()),
            float(real.sum()),
        ],
        dtype=torch.float64,
    )


def router_drift(old: Tensor, new: Tensor, mask: Tensor) -> tuple[float, float]:
    """(fraction of masked (token, layer) positions whose expert set differs between `old`
    and `new` [B, S, L, k], fraction of masked tokens with any such layer); 0 with no tokens.

    >>> old = torch.tensor([[[[0, 1], [2, 3]], [[4, 5], [6, 7]]]])  # [1, 2, 2, 2]
    >>> new = torch.tensor([[[[1, 0], [2, 4]], [[4, 5], [6, 7]]]])  # order differs; one set
    >>> router_drift(old, new, torch.tensor([[1, 1]]))
    (0.25, 0.5)
    """
    return fractions(drift_counts(old, new, mask))


def fractions(counts: Tensor) -> tuple[float, float]:
    """`drift_counts` (summed over passes) -> (position fraction, token fraction)."""
    positions, tokens = float(counts[1]), float(counts[3])
    return (
        float(counts[0]) / positions if positions else 0.0,
        float(counts[2]) / tokens if tokens else 0.0,
    )


def _columns_mask(completion_mask: Tensor, mb: MicroBatch, prompt_len: int) -> Tensor:
    """1 on the real completion tokens of a micro-batch's `[n_k, P_k + T_k]` columns."""
    width = prompt_len - mb.start + mb.completion_len
    mask = torch.zeros(len(mb.rows), width, device=completion_mask.device)  # [n_k, W]
    mask[:, width - mb.completion_len :] = completion_mask[mb.rows, : mb.completion_len]
    return mask


@dataclass
class DriftMeter:
    """Router drift summed over the passes it is given, for one metrics row."""

    counts: Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.float64))

    def add(self, counts: Tensor) -> None:
        self.counts += counts

    def metrics(self) -> dict[str, float]:
        """The metrics row's `router_drift` and `router_drift_tokens`; then starts over."""
        positions, tokens = fractions(self.counts)
        self.counts = torch.zeros(4, dtype=torch.float64)
        return {"router_drift": positions, "router_drift_tokens": tokens}


def recording(
    routers: list[torch.nn.Module], into: Tensor, prompt_len: int
) -> Callable[[MicroBatch], AbstractContextManager[Any]]:
    """For `completions.batched_logprobs(around=...)`: each micro-batch's forward writes its
    routers' choice into `into` `[N, P+T, L, k]` at its own rows and columns."""

    @contextmanager
    def around(mb: MicroBatch) -> Iterator[None]:
        with RouterTap(routers) as tap:
            yield
        columns = slice(mb.start, prompt_len + mb.completion_len)
        into[mb.rows, columns] = tap.experts(len(mb.rows)).to(into.device)

    return around


def empty_choice(
    routers: list[torch.nn.Module], rows: int, columns: int, device: torch.device
) -> Tensor:
    """`[rows, columns, L, k]` filled with `NO_EXPERT`, for `recording`."""
    k: int = routers[0].top_k  # type: ignore[assignment]
    shape = (rows, columns, len(routers), k)
    return torch.full(shape, NO_EXPERT, dtype=EXPERT_DTYPE, device=device)


def update_pass(
    model: torch.nn.Module,
    old_experts: Tensor | None,
    completion_mask: Tensor,
    mb: MicroBatch,
    prompt_len: int,
    *,
    replay: bool,
    meter: DriftMeter | None,
) -> AbstractContextManager[Any]:
    """Around one update forward of micro-batch `mb`: with `replay`, route with π_old's
    experts (`old_experts` `[N, P+T, L, k]`); with a `meter`, add the drift of the router's
    own choice from π_old's over the micro-batch's completion tokens. A dense model, or a
    batch without π_old's choice, gets a no-op."""
    if old_experts is None or (not replay and meter is None):
        return nullcontext()
    return _update_pass(model, old_experts, completion_mask, mb, prompt_len, replay, meter)


@contextmanager
def _update_pass(
    model: torch.nn.Module,
    old_experts: Tensor,
    completion_mask: Tensor,
    mb: MicroBatch,
    prompt_len: int,
    replay: bool,
    meter: DriftMeter | None,
) -> Iterator[None]:
    old = microbatch.take(old_experts, mb, prompt_len)  # [n_k, P_k + T_k, L, k]
    with RouterTap(find_routers(model), replay=old if replay else None) as tap:
        yield
    if meter is not None:
        new = tap.experts(len(mb.rows)).to(old.device)  # [n_k, P_k + T_k, L, k]
        meter.add(drift_counts(old, new, _columns_mask(completion_mask, mb, prompt_len)))
