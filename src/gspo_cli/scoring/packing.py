"""Packed log-prob forwards: each distinct prompt once, no padding.

The G completions of a prompt share it, and most completions are much shorter than the
longest. `pack_rows` lays a left-padded batch out as segments that hold each distinct prompt
once followed by its rows' real completion tokens; `attention_masks` says which tokens each
token may see (its own prompt and its own row, at its position in the row, within a sliding
window where a layer has one), in the form the model's decoder takes; `packed_logprobs` runs
the decoder over that layout. The log-probs equal a padded forward's up to rounding.

Whether a given model may be packed is decided in `completions.support` (a probe against the
padded forward), not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gspo_cli.scoring.chunked import token_logprobs


@dataclass(frozen=True)
class PackedRows:
    """Rows of a `[N, P+T]` batch without padding, each distinct prompt once.

    Each distinct prompt's real tokens come once, followed by the completion tokens of each
    of its rows except the last (whose next-token prediction is never scored): a *group*.
    Groups are packed into B segments of at most S tokens. A token sees the earlier tokens
    of its own prompt and of its own row and nothing else (`visible`), at the position it
    has in its own row, so each row's log-probs are those of the padded batch. Unused slots
    at a segment's end see only themselves and are never read.
    """

    input_ids: torch.Tensor  # [B, S]
    position_ids: torch.Tensor  # [B, S]
    visible: torch.Tensor  # [B, 1, S, S] bool, True where query (row) may attend key (column)
    source: torch.Tensor  # [M] flat index into [B·S] of the state predicting each scored token
    targets: torch.Tensor  # [M] the scored tokens
    scored: torch.Tensor  # [N, T] bool, the completion tokens that are real (M of them)
    cost: float  # estimated cost, in the units of `layout_cost`


def layout_cost(segments: int, width: int, token_cost: float) -> float:
    """Cost of a forward over `segments × width` tokens: each token through the linear layers
    (`token_cost`, in units of one query-key pair of attention) plus width² pairs a segment."""
    return segments * width * token_cost + segments * width**2


def _segments(lengths: list[int], capacity: int) -> list[list[int]]:
    """Groups (by index) packed first-fit, longest first, into segments of at most
    `capacity` tokens (a longer group gets a segment of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for g in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((b for b, r in enumerate(room) if r >= lengths[g]), None)
        if slot is None:
            bins.append([g])
            room.append(capacity - lengths[g])
        else:
            bins[slot].append(g)
            room[slot] -= lengths[g]
    return bins


Group = list[tuple[int, int, int]]  # a prompt and its rows' inputs: (token, position, row)


def _groups(
    ids: list[list[int]], attention: list[list[int]], p: int
) -> tuple[dict[tuple[int, ...], Group], list[tuple[tuple[int, ...], int]]] | None:
    """Each distinct prompt's group (its real tokens, row -1, then each of its rows' completion
    tokens but the last) and, per scored token in row order, (its prompt, the index within the
    group of the token whose state predicts it). None when a row has no prompt token."""
    groups: dict[tuple[int, ...], Group] = {}
    sources: list[tuple[tuple[int, ...], int]] = []
    for row in range(len(ids)):
        prompt = tuple(t for t, a in zip(ids[row][:p], attention[row][:p], strict=True) if a)
        if not prompt:
            return None
        group = groups.setdefault(prompt, [(t, i, -1) for i, t in enumerate(prompt)])
        real = sum(attention[row][p:])  # completion tokens up to and including the stop token
        inputs = ids[row][p : p + real - 1]  # each predicts the next; the last predicts nothing
        sources.append((prompt, len(prompt) - 1))  # the prompt's last token predicts the first
        sources += [(prompt, len(group) + i) for i in range(len(inputs))]
        group += [(t, len(prompt) + i, row) for i, t in enumerate(inputs)]
    return groups, sources


def _cheapest_segments(lengths: list[int], token_cost: float) -> tuple[float, list[list[int]], int]:
    """(cost, segments as lists of group indices, segment size) of least `layout_cost`, over
    capacities from the longest group, doubling until one segment holds everything."""
    plans = []
    capacity = max(lengths)
    while True:
        bins = _segments(lengths, capacity)
        size = max(sum(lengths[g] for g in b) for b in bins)
        plans.append((layout_cost(len(bins), size, token_cost), bins, size))
        if len(bins) == 1:
            return min(plans, key=lambda plan: plan[0])
        capacity *= 2


def pack_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_len: int, token_cost: float
) -> PackedRows | None:
    """The packed layout of a left-padded prompt + right-padded completion batch, with the
    segment size of least `layout_cost`; None when a row has no prompt token (nothing
    would predict its first completion token)."""
    p = input_ids.shape[1] - completion_len
    found = _groups(input_ids.tolist(), attention_mask.tolist(), p)
    if found is None:
        return None
    groups, sources = found
    keys = list(groups)
    cost, bins, size = _cheapest_segments([len(groups[k]) for k in keys], token_cost)
    slots: list[list[tuple[int, int, int, int]]] = []  # (token, position, row, group) per slot
    start: dict[tuple[int, ...], int] = {}  # a group's first flat index in [B·S]
    for b, segment in enumerate(bins):
        slots.append([])
        for g in segment:
            start[keys[g]] = b * size + len(slots[b])
            slots[b] += [(token, place, row, g) for token, place, row in groups[keys[g]]]
        slots[b] += [(0, 0, -2, -1)] * (size - len(slots[b]))  # unused: row -2, group -1
    device = input_ids.device
    table = torch.tensor(slots, device=device)  # [B, S, 4]
    pos, owner, member = table[..., 1], table[..., 2], table[..., 3]  # [B, S] each
    slot = torch.arange(size, device=device)
    visible = (
        (member[:, :, None] == member[:, None, :])  # [B, S, S] same group
        & (pos[:, None, :] <= pos[:, :, None])  # causal
        & ((owner[:, None, :] == -1) | (owner[:, None, :] == owner[:, :, None]))  # prompt/own
        & ((owner[:, :, None] != -2) | (slot[:, None] == slot[None, :]))  # unused: itself
    )
    scored = attention_mask[:, p:].bool()  # [N, T]
    return PackedRows(
        input_ids=table[..., 0].to(input_ids.dtype),
        position_ids=pos,
        visible=visible[:, None],
        source=torch.tensor([start[g] + i for g, i in sources], device=device, dtype=torch.long),
        targets=input_ids[:, p:][scored],
        scored=scored,
        cost=cost,
    )


def token_cost(model: Any) -> float:
    """A token's linear layers (~24·H² FLOPs) in units of one attended query-key pair
    (~4·H FLOPs): 6·H."""
    return 6.0 * float(model.config.hidden_size)


FULL, SLIDING = "full_attention", "sliding_attention"


def masks_expressible(config: Any) -> bool:
    """Whether every layer's attention is full or sliding-window (with a window), the two
    kinds `attention_masks` can express."""
    window = getattr(config, "sliding_window", None)
    kinds = set(getattr(config, "layer_types", None) or [FULL])
    return kinds <= {FULL, SLIDING} and (SLIDING not in kinds or bool(window))


def attention_masks(
    config: Any, layout: PackedRows, dtype: torch.dtype
) -> torch.Tensor | dict[str, torch.Tensor] | None:
    """The packed layout's attention in the form the decoder takes, or None when it cannot
    be expressed (a layer type other than full or sliding attention; or a model without
    per-layer types whose sliding window is shorter than a row, whose mask the decoder
    would build from array indices).

    A config with `layer_types` (Qwen2/3, Gemma 2/3, SmolLM3, GPT-OSS, ...) gets one
    `[B, 1, S, S]` mask per layer type; other decoders get the one mask as a tensor, which
    transformers passes through unchanged. A sliding layer of window W lets a query at
    position q see keys at positions k > q - W (transformers' `sliding_window_overlay`, in
    positions within the row rather than in array indices). The eager attention adds its
    mask, so it gets 0 / dtype-min instead of booleans."""
    if not masks_expressible(config):
        return None
    visible = layout.visible  # [B, 1, S, S]
    window = getattr(config, "sliding_window", None) or None
    pos = layout.position_ids  # [B, S]
    kinds = getattr(config, "layer_types", None)
    if kinds is None and window is not None and int(pos.max()) + 1 > window:
        return None
    masks = {FULL: visible} if kinds is None else {}
    for kind in set(kinds or ()):
        if kind == FULL:
            masks[kind] = visible
        else:
            assert window is not None, "masks_expressible: a sliding layer has a window"
            near = pos[:, None, None, :] > pos[:, None, :, None] - window  # [B, 1, S, S]
            masks[kind] = visible & near
    if config._attn_implementation == "eager":
        masks = {
            k: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(
                ~m, torch.finfo(dtype).min
            )
            for k, m in masks.items()
        }
    return masks[FULL] if kinds is None else masks


def packed_logprobs(
    model: Any,
    head: Any,
    layout: PackedRows,
    masks: torch.Tensor | dict[str, torch.Tensor],
    temperature: float,
    chunk_tokens: int,
) -> torch.Tensor:
    """Completion log-probs `[N, T]` through the packed layout, 0 on padding: the decoder
    stack (`base_model`) over the segments, then the head on the scored states only."""
    hidden = model.base_model(
        input_ids=layout.input_ids,
        attention_mask=masks,
        position_ids=layout.position_ids,
        use_cache=False,
    ).last_hidden_state  # [B, S, H]
    picked = token_logprobs(
        hidden.flatten(0, 1)[layout.source],
        head.weight,
        layout.targets,
        temperature=temperature,
        chunk_tokens=chunk_tokens,
    )  # [M]
    out = picked.new_zeros(layout.scored.shape)  # [N, T]
    out[layout.scored] = picked
    return out
