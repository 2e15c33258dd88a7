"""Sampling from the policy: a batched KV-cache decoding loop with per-row seeded sampling
(loading lives in `models.loading`, log-probs in `scoring`).

Generation's use of transformers' model API lives here, so a rename in a new transformers
release changes one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gspo_cli.scoring.completions import support


@dataclass(frozen=True)
class Generation:
    """A batch of sampled completions, left-padded prompts followed by completions."""

    input_ids: torch.Tensor  # [N, P+T] prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor  # [N, P+T] 1 on real prompt and completion tokens
    completion_mask: torch.Tensor  # [N, T] float, 1.0 up to and including the first EOS
    truncated: torch.Tensor  # [N] bool, no EOS within max_new_tokens
    texts: list[str]  # decoded completions, special tokens removed
    # [N, T] float32 log-probs of the sampled tokens under the sampling pass itself, at the
    # sampling temperature, 0 on padding; None unless `sampler_logprobs_suffice` (see there)
    logprobs: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.completion_mask.shape[1] :]  # [N, T]


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a completion (the tokenizer's EOS and the model's)."""
    ids = {int(tokenizer.eos_token_id)}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def completion_mask(completion_ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1.0 on each completion's tokens up to and including its first stop token."""
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))
    # Stops strictly before position t: a token is real if none came earlier.
    stops_before = torch.cumsum(is_stop.int(), dim=1) - is_stop.int()  # [N, T]
    return (stops_before == 0).float()  # [N, T]


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set whose probability reaches `top_p`
    (transformers' `TopPLogitsWarper` rule; the most likely token always stays)."""
    ordered, order = torch.sort(scores, descending=False)  # [N, V] ascending
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)  # [N, V]
    drop_sorted = cumulative <= (1 - top_p)  # [N, V]
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)  # [N, V] back in vocabulary order
    return scores.masked_fill(drop, -math.inf)


# Noise drawn ahead per generator call: up to 8 positions, at most 2^22 float64 values (32 MiB)
# for the whole batch; a large vocabulary falls back to one position per call.
NOISE_BLOCK_POSITIONS = 8
NOISE_BLOCK_ELEMENTS = 2**22


class RowSampler:
    """Draws each row's next token from softmax(logits / T) (top-p filtered) with the row's
    own generator, by the Gumbel-max trick: argmax(logits / T + Gumbel noise) is an exact
    sample of that softmax.

    Used as a transformers logits processor under greedy decoding. Row i's noise at
    decoding position t is the t-th draw of a generator seeded with `seeds[i]`, so a row's
    completion does not depend on which other rows share its batch: split a batch across
    processes with the same per-row seeds and each row samples exactly what it would have in
    one process. Noise is float64, so a uniform draw of exactly 0 (which would make a
    filtered token win) has probability 2^-53 rather than float32's 2^-24 per entry.
    """

    def __init__(
        self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device
    ) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.device = device
        self._block: torch.Tensor | None = None  # [N, k, V] Gumbel noise drawn ahead
        self._used = 0  # positions of `_block` handed out

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Gumbel-perturbed scores `[N, V]` (float64) for the next position (a transformers
        logits processor)."""
        scores = scores.double() / self.temperature  # [N, V]
        if self.top_p < 1:
            scores = top_p_filter(scores, self.top_p)  # [N, V]
        return scores + self._gumbel(scores.shape[1])  # [N, V] + Gumbel(0, 1)

    def choose(self, step: int, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The sampled tokens `[A]` of `rows` `[A]` at decoding position `step` (0, 1, ... in
        order) from their logits `[A, V]`; every row's generator advances either way."""
        del step  # the generators' positions are the steps already taken
        scores = logits.double() / self.temperature  # [A, V]
        if self.top_p < 1:
            scores = top_p_filter(scores, self.top_p)  # [A, V]
        return (scores + self._gumbel(scores.shape[1])[rows]).argmax(dim=-1)  # [A]

    def _gumbel(self, v: int) -> torch.Tensor:
        """The next position's Gumbel noise `[N, V]`, each row from its own generator.

        Each generator is asked for several positions' noise at once and the draws are
        handed out one position at a time: a generator's stream does not depend on how its
        draws are grouped (one `rand(k, V)` equals k successive `rand(V)`), so this is the
        same noise, with one call per row every k positions rather than every position."""
        if self._block is None or self._used == self._block.shape[1] or self._block.shape[2] != v:
            k = max(
                1, min(NOISE_BLOCK_POSITIONS, NOISE_BLOCK_ELEMENTS // (v * len(self.generators)))
            )
            uniform = torch.stack(
                [
                    torch.rand(k, v, generator=g, dtype=torch.float64, device=self.device)
                    for g in self.generators
                ]
            )  # [N, k, V] in [0, 1)
            self._block, self._used = -torch.log(-torch.log(uniform)), 0  # Gumbel(0, 1)
        self._used += 1
        return self._block[:, self._used - 1]  # [N, V]


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seeds: Sequence[int] | None = None,
    sampler_logprobs: bool = False,
) -> Generation:
    """Sample (or greedily decode) one completion per prompt with a KV cache.

    Repeat a prompt G times in `prompts` to get a group. The sampling distribution is the
    model's softmax at `temperature` (top-k off; top-p when < 1), which is what
    `completion_logprobs` scores. Row i is sampled with its own generator seeded by
    `seeds[i]` (see `RowSampler`); without `seeds`, they are drawn from torch's global RNG.
    The sampling pass's own log-probs come back (`Generation.logprobs`) when they can stand
    in for π_old (`sampler_logprobs_suffice`), or always with `sampler_logprobs` (sampling
    only): the mismatch ledger compares them with a separate π_old forward.
    """
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    stop_ids = eos_ids(model, tokenizer)
    choose = _chooser(len(prompts), greedy, seeds, temperature, top_p, device)
    was_training = model.training
    model.eval()
    out, logprobs = decode(
        model,
        enc["input_ids"].to(device),
        enc["attention_mask"].to(device),
        max_new_tokens=max_new_tokens,
        choose=choose,
        stop_ids=stop_ids,
        pad_id=tokenizer.pad_token_id,
        temperature=None
        if greedy or not (sampler_logprobs or sampler_logprobs_suffice(model))
        else temperature,
    )  # [N, P+T'] with T' <= max_new_tokens, [N, T'] or None
    model.train(was_training)
    prompt_len = enc["input_ids"].shape[1]
    completion_ids = out[:, prompt_len:]  # [N, T']
    mask = completion_mask(completion_ids, stop_ids)  # [N, T']
    ended = torch.isin(completion_ids, torch.tensor(stop_ids, device=device)).any(dim=1)  # [N]
    attention = torch.cat([enc["attention_mask"].to(device), mask.long()], dim=1)  # [N, P+T']
    # Decode only each completion's own tokens: anything after its stop token becomes padding.
    kept = torch.where(mask.bool(), completion_ids, tokenizer.pad_token_id)  # [N, T']
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    return Generation(
        input_ids=out,
        attention_mask=attention,
        completion_mask=mask,
        truncated=~ended,
        texts=texts,
        logprobs=logprobs,
    )


def _chooser(
    n: int,
    greedy: bool,
    seeds: Sequence[int] | None,
    temperature: float,
    top_p: float,
    device: torch.device,
) -> Chooser:
    """Decoding is greedy either way: sampling is the Gumbel-max argmax of `RowSampler`."""
    if greedy:
        return _argmax
    if seeds is None:
        seeds = torch.randint(2**62, (n,)).tolist()
    return RowSampler(seeds, temperature, top_p, device).choose


def sampler_logprobs_suffice(model: Any) -> bool:
    """Whether the log-probs the sampling pass computes anyway can stand in for a separate
    π_old forward: for a dense model (no expert routing to record) in float32 or wider.
    There the cached decoding pass and the full forward compute the same numbers up to
    float32 rounding (~1e-6 in a log-prob, against clip ranges of 1e-4 and up); in bf16
    they would differ by ~1e-2, so a separate forward stays (`completions.support`)."""
    return support(model).sampler


def _argmax(step: int, logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1)  # [A]


Chooser = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def decode(
    model: Any,
    input_ids: torch.Tensor,  # [N, P] left-padded prompts
    attention_mask: torch.Tensor,  # [N, P]
    *,
    max_new_tokens: int,
    choose: Chooser,
    stop_ids: list[int],
    pad_id: int,
    temperature: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prompts followed by up to `max_new_tokens` tokens -> `[N, P+T']`, with a KV cache;
    with a `temperature`, also each new token's log-prob at that temperature `[N, T']`
    (float32, 0 after the stop token).

    `choose(t, logits, rows)` picks the t-th new token of each row in `rows` `[A]` (the rows
    still decoding) from its float32 next-token logits `[A, V]`. After a row's stop token
    come `pad_id`s; decoding ends when every row has stopped. Per row, the same steps as
    transformers' `generate` with greedy decoding and a logits processor (positions from
    the attention mask, float32 logits), without its per-token bookkeeping, reading each
    distinct prompt once (a group's G rows share it) and dropping finished rows from the
    batch instead of decoding padding for them.
    """
    # Longer than 60 lines on purpose: the loop's state (cache, rows still decoding, the
    # next step's ids, mask and positions) changes together and reads best in one place.
    from transformers import DynamicCache

    n, p = input_ids.shape
    device = input_ids.device
    cache = DynamicCache(config=model.config)
    stops = torch.tensor(stop_ids, device=device)
    new = torch.full((n, max_new_tokens), pad_id, dtype=input_ids.dtype, device=device)
    scored = None if temperature is None else torch.zeros(n, max_new_tokens, device=device)
    prompt_len = attention_mask.sum(dim=1)  # [N]
    distinct, row_of = torch.unique(
        torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True
    )  # [D, 2P], [N]
    step_ids, step_mask = distinct[:, :p], distinct[:, p:]  # [D, P]
    step_positions = (step_mask.cumsum(dim=1) - 1).masked_fill(step_mask == 0, 0)  # [D, P]
    active = torch.arange(n, device=device)  # [A] rows still decoding
    taken = 0
    for t in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=step_mask,
            position_ids=step_positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1].to(dtype=torch.float32)  # [A, V] ([D, V] at t = 0)
        if t == 0:  # every row gets its prompt's cache and logits
            logits = logits[row_of]  # [N, V]
            cache.batch_select_indices(row_of)
        token = choose(t, logits, active)  # [A]
        new[active, t] = token
        if scored is not None:
            logprobs = torch.log_softmax(logits / temperature, dim=-1)  # [A, V]
            scored[active, t] = logprobs.gather(1, token[:, None]).squeeze(1)  # [A]
        taken = t + 1
        finished = torch.isin(token, stops)  # [A]
        if taken == max_new_tokens or bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(1)  # [A'] positions in `active`
            active, token = active[keep], token[keep]
            cache.batch_select_indices(keep)
        step_ids = token[:, None]  # [A, 1]
        step_positions = (prompt_len[active] + t)[:, None]  # [A, 1] the token's position
        generated = attention_mask.new_ones(len(active), taken)  # [A, t+1]
        step_mask = torch.cat([attention_mask[active], generated], dim=1)  # [A, P+t+1]
    ids = torch.cat([input_ids, new[:, :taken]], dim=1)  # [N, P+T']
    return ids, None if scored is None else scored[:, :taken]  # [N, T']
