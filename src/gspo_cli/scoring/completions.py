"""Scoring: per-token log-probabilities of completions, and what a model lets us do fast.

`completion_logprobs` is log π(y_t | x, y_<t) of each completion token at the sampling
temperature, by the cheapest path the model supports:
- packed (`packing`): each distinct prompt once, no padding, a ready attention mask;
- padded, with the chunked head (`chunked.token_logprobs`): no `[N, T, vocab]` logits;
- padded, with the model's own logits of the scored positions: any output head.

Which paths a model supports is found once per model by `support`, a probe that runs each
path on a small fixed batch and keeps the ones that agree with the model's own forward,
rather than by a list of architectures. A path that is off is named, with why, in one line.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from gspo_cli.base.constants import LOGPROB_CHUNK_TOKENS
from gspo_cli.scoring import microbatch, packing
from gspo_cli.scoring.adapters import AdaptersOff, adapters_disabled
from gspo_cli.scoring.chunked import token_logprobs


def is_moe(config: Any) -> bool:
    """Whether the config describes a mixture-of-experts model (Qwen2/3-MoE, Mixtral,
    GPT-OSS, OLMoE, DeepSeek, ... name the expert count one of these ways)."""
    keys = ("num_experts", "num_local_experts", "n_routed_experts")
    return any(getattr(config, key, None) for key in keys)


# Config keys of transforms the model's forward applies to the head's output: Gemma 2's
# softcap, Cohere's scale, Granite's divisor. A random test model's logits are too small for
# a probe to see a softcap, so these are read from the config; `support` probes the rest.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def logit_transform(config: Any) -> str:
    """The first of `LOGIT_TRANSFORMS` the config sets to something that changes the logits,
    or ""."""
    return next((k for k in LOGIT_TRANSFORMS if getattr(config, k, None) not in (None, 0, 1)), "")


def plain_linear_head(model: Any) -> Any | None:
    """The output head if it is a bias-free linear layer whose output is the logits, else
    None."""
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    return None if logit_transform(model.config) else head


@dataclass(frozen=True)
class Support:
    """What a model's scoring may use; each flag was checked on the model itself."""

    head: bool  # hidden states @ head.weight give the model's own log-probs (chunked head)
    packed: bool  # packed forwards give the padded forward's log-probs
    sampler: bool  # the sampling pass's log-probs may stand in for a separate π_old forward
    note: str  # "" when all are on; else one line: what is off, and why


# Per model object: (its dtype and attention implementation when probed, what it supports).
_SUPPORT: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], Support]] = (
    weakref.WeakKeyDictionary()
)
PACKED_ATTENTION = ("sdpa", "eager")  # implementations that take a ready 4D mask


def support(model: Any) -> Support:
    """What `model` (a causal LM or `LogProbModel`) supports, probed on first use and
    remembered for the model object (probed again if its dtype or attention implementation
    changes). Call it once before sharding the model, so every rank probes the same way."""
    lm = causal_lm(model)
    key = (next(lm.parameters()).dtype, lm.config._attn_implementation)
    found = _SUPPORT.get(lm)
    if found is None or found[0] != key:
        found = _SUPPORT[lm] = (key, _probe(lm))
    return found[1]


def _probe_batch(vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Four rows of two prompts (5 and 3 tokens, left-padded), completions of 4, 2, 3 and 1
    tokens (right-padded): every way packing can go wrong shows in one small forward."""
    ids = (torch.arange(4 * 9, device=device).view(4, 9) * 7919 + 13) % vocab  # [4, 9]
    ids[1, :5] = ids[0, :5]  # rows 0 and 1 share a prompt, so do rows 2 and 3
    ids[3, :5] = ids[2, :5]
    lengths = [(5, 4), (5, 2), (3, 3), (3, 1)]  # (prompt, completion) tokens per row
    attention = torch.zeros(4, 9, dtype=torch.long, device=device)  # [4, 9]
    for row, (p, c) in enumerate(lengths):
        attention[row, 5 - p : 5 + c] = 1
    return ids * attention, attention, 4


def _probe(model: Any) -> Support:
    """Run the chunked head and the packed layout against the model's own forward on
    `_probe_batch`, in eval mode, without gradients; keep what agrees."""
    config = model.config
    dtype = next(model.parameters()).dtype
    exact = dtype in (torch.float32, torch.float64)
    tolerance = 1e-4 if exact else 5e-2  # far above rounding, far below a wrong mask
    vocab = model.get_input_embeddings().num_embeddings
    ids, attention, t = _probe_batch(vocab, next(model.parameters()).device)
    real = attention[:, -t:].bool()  # [4, T]
    notes: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            own = _own_logits_logprobs(model, ids, attention, t, 1.0)  # [4, T]
            head = plain_linear_head(model)
            padded = _attempt(lambda: _padded_logprobs(model, head, ids, attention, t), head)
            head_gap = _gap(padded, own, real)
            if head_gap > tolerance:
                notes.append(_head_note(model, head, head_gap))
                head = None
            packed_ok = head is not None and _packed_ok(model, notes)
            if packed_ok:
                packed_ok = _packed_agrees(model, head, (ids, attention, t), own, tolerance, notes)
    finally:
        model.train(was_training)
    sampler = exact and not is_moe(config)
    if not exact:
        notes.append(f"π_old from its own forward ({str(dtype).removeprefix('torch.')})")
    off = "; ".join(notes)
    return Support(head is not None, packed_ok, sampler, off and f"log-probs: {off}")


# What a decoder may raise when a fast path hands it something it does not take (an unusual
# mask, a module layout without `base_model`): the model is then scored by its own forward.
FAST_PATH_ERRORS = (TypeError, ValueError, AttributeError, RuntimeError, KeyError, IndexError)


def _attempt(path: Callable[[], torch.Tensor], wanted: Any) -> torch.Tensor | None:
    """`path()` when `wanted`; None when not, or when it raises one of `FAST_PATH_ERRORS`."""
    if not wanted:
        return None
    try:
        return path()
    except FAST_PATH_ERRORS:
        return None


def _packed_agrees(
    model: Any,
    head: Any,
    batch: tuple[torch.Tensor, torch.Tensor, int],
    own: torch.Tensor,
    tolerance: float,
    notes: list[str],
) -> bool:
    """Whether the packed forward of the probe batch equals the model's own forward; when
    not, why goes into `notes`. A window shorter than the probe's rows (which the packed
    path leaves to the padded one, batch by batch) passes."""
    ids, attention, t = batch
    try:
        packed = _packed(model, head, ids, attention, t, 1.0, 0, force=True)
    except FAST_PATH_ERRORS as exc:
        notes.append(f"padded forwards, not packed (the decoder refused: {type(exc).__name__})")
        return False
    gap = _gap(packed, own, attention[:, -t:].bool())
    if packed is not None and gap > tolerance:
        notes.append(f"padded forwards, not packed (packed differ by {gap:.1e})")
        return False
    return True


def _gap(a: torch.Tensor | None, b: torch.Tensor, real: torch.Tensor) -> float:
    """Largest |a - b| over the real completion tokens (inf when `a` is missing)."""
    return float("inf") if a is None else float((a.float() - b.float())[real].abs().max())


def _head_note(model: Any, head: Any, gap: float) -> str:
    transform = logit_transform(model.config)
    if transform:
        why = f"the model applies {transform}={getattr(model.config, transform)} to its logits"
    elif head is None:
        why = "its output head is not a bias-free linear layer"
    elif gap == float("inf"):
        why = "its decoder cannot be run apart from its head"
    else:
        why = f"its output head differs from its logits by {gap:.1e}"
    return f"padded forwards with each scored token's full logits ({why})"


def _packed_ok(model: Any, notes: list[str]) -> bool:
    """Whether packing can be tried at all; when not, why goes into `notes`."""
    config = model.config
    why = ""
    if is_moe(config):
        why = "mixture-of-experts: expert choices are recorded per padded place"
    elif config._attn_implementation not in PACKED_ATTENTION:
        why = f"{config._attn_implementation} attention takes no ready mask"
    elif not packing.masks_expressible(config):
        kinds = sorted(set(config.layer_types))
        why = f"no packed mask for layer types {', '.join(kinds)}"
    if why:
        notes.append(f"padded forwards, not packed ({why})")
    return not why


def _completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float,
    chunk_tokens: int,
) -> torch.Tensor:
    """`completion_logprobs` on a causal LM, by the cheapest path `support` allows."""
    can = support(model)
    head = plain_linear_head(model) if can.head else None
    if head is None:
        return _own_logits_logprobs(model, input_ids, attention_mask, completion_len, temperature)
    if can.packed:
        out = _packed(
            model, head, input_ids, attention_mask, completion_len, temperature, chunk_tokens
        )
        if out is not None:
            return out  # [N, T]
    return _padded_logprobs(
        model, head, input_ids, attention_mask, completion_len, temperature, chunk_tokens
    )


def _packed(
    model: Any,
    head: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float,
    chunk_tokens: int,
    force: bool = False,
) -> torch.Tensor | None:
    """Log-probs `[N, T]` through the packed layout, or None when it would cost more than
    the padded forward (unless `force`) or cannot be expressed for this batch."""
    cost = packing.token_cost(model)
    layout = packing.pack_rows(input_ids, attention_mask, completion_len, cost)
    n, width = input_ids.shape
    if layout is None or (layout.cost >= packing.layout_cost(n, width, cost) and not force):
        return None
    masks = packing.attention_masks(model.config, layout, head.weight.dtype)
    if masks is None:
        return None
    return packing.packed_logprobs(model, head, layout, masks, temperature, chunk_tokens)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position in its row, from the mask, so left padding does not shift it."""
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [N, P+T]


def _padded_logprobs(
    model: Any,
    head: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    chunk_tokens: int = 0,
) -> torch.Tensor:
    """The decoder over the padded batch, then the chunked head on the last T states."""
    hidden = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_positions(attention_mask),
        use_cache=False,
    ).last_hidden_state[:, -completion_len - 1 : -1]  # [N, T, H]
    targets = input_ids[:, -completion_len:]  # [N, T]
    return token_logprobs(
        hidden, head.weight, targets, temperature=temperature, chunk_tokens=chunk_tokens
    )  # [N, T]


def _own_logits_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float,
) -> torch.Tensor:
    """The model's own forward and logits (whatever its head does) of the last T+1
    positions, then log-softmax: any model, at the cost of `[N, T, vocab]` logits."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=_positions(attention_mask),
        logits_to_keep=completion_len + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # [N, T, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logprobs = torch.log_softmax(logits, dim=-1)  # [N, T, V]
    targets = input_ids[:, -completion_len:]  # [N, T]
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N, T]


class LogProbModel(torch.nn.Module):
    """A causal LM as a module whose forward returns completion log-probs `[N, T]`.

    `completion_logprobs` runs the decoder stack (`base_model`) and uses the output head's
    weight itself, outside the causal LM's own forward. Under FSDP2 this wrapper is the root
    sharded module: calling it runs the root's hooks, which gather the embedding, final norm
    and head before the forward and reduce-scatter their gradients after the backward.
    Without FSDP it is a thin shell with the same numbers. `.model` is the causal LM (for
    generation and saving).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_len: int,
        temperature: float = 1.0,
        chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
    ) -> torch.Tensor:
        logprobs = _completion_logprobs(
            self.model, input_ids, attention_mask, completion_len, temperature, chunk_tokens
        )  # [N, T]
        return logprobs.clone()  # not a view: FSDP2 hooks the output for backward


def causal_lm(model: Any) -> Any:
    """The causal LM inside a `LogProbModel`, or `model` itself."""
    return model.model if isinstance(model, LogProbModel) else model


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
) -> torch.Tensor:
    """log π(y_t | x, y_<t) of each completion token, at the sampling temperature -> [N, T].

    `model` is a causal LM or a `LogProbModel` (called through its forward, so FSDP2's hooks
    run). For the usual bias-free linear head the logits are never materialised for all
    tokens at once (`chunked.token_logprobs`, chunked); other heads fall back to full logits
    of the last T+1 positions. Positions come from the attention mask so left padding does
    not shift them.
    """
    if isinstance(model, AdaptersOff):
        with adapters_disabled(model.policy.model):
            return completion_logprobs(
                model.policy, input_ids, attention_mask, completion_len, temperature, chunk_tokens
            )
    if isinstance(model, LogProbModel):
        out: torch.Tensor = model(
            input_ids, attention_mask, completion_len, temperature, chunk_tokens
        )  # [N, T]
        return out
    return _completion_logprobs(
        model, input_ids, attention_mask, completion_len, temperature, chunk_tokens
    )


@torch.no_grad()
def batched_logprobs(
    model: Any,
    gen: microbatch.Rows,
    *,
    temperature: float,
    max_tokens: int,
    chunk_tokens: int = LOGPROB_CHUNK_TOKENS,
    around: Callable[[microbatch.MicroBatch], AbstractContextManager[Any]] | None = None,
) -> torch.Tensor:
    """`completion_logprobs` of every row of a generation, in token-budget micro-batches,
    without gradients (π_old and the reference) -> [N, T], 0 on padding. `around(mb)`, when
    given, is a context open during micro-batch `mb`'s forward (e.g. recording MoE routing)."""
    n, t = gen.completion_mask.shape
    p = gen.input_ids.shape[1] - t
    out = torch.zeros(n, t, device=gen.input_ids.device)  # [N, T]
    for mb in microbatch.plan(gen.attention_mask, gen.completion_mask, torch.arange(n), max_tokens):
        ids = microbatch.take(gen.input_ids, mb, p)  # [n_k, P_k + T_k]
        attn = microbatch.take(gen.attention_mask, mb, p)  # [n_k, P_k + T_k]
        with around(mb) if around is not None else nullcontext():
            lp = completion_logprobs(
                model, ids, attn, mb.completion_len, temperature, chunk_tokens
            )  # [n_k, T_k]
        out[mb.rows, : mb.completion_len] = lp.float()  # [n_k, T_k]
    return out
