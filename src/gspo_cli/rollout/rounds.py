"""A step's sampling rounds: one, or with dynamic sampling (DAPO) as many as it takes to
fill the step with informative groups, and the batch chosen from them (see `dapo`).

Every decision here reads only whole-round data that every rank holds (the gathered
rewards), so under torchrun all ranks sample the same number of rounds and choose the same
groups; the prompts of every round come from the run's one data stream, so a resumed run
continues from the same position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gspo_cli.recipe import Recipe
from gspo_cli.rollout import dapo
from gspo_cli.rollout.sampling import Generation
from gspo_cli.rollout.stages import Samples
from gspo_cli.scoring import routing


@dataclass(frozen=True)
class Round:
    samples: Samples  # the whole round, gathered (`stages.gather`), on every rank
    rewards: torch.Tensor  # [N_r]
    indices: list[int]  # the round's example indices, one per group, in row order
    score_s: float


def enough(rounds: list[Round], recipe: Recipe) -> bool:
    """Whether the step has sampled enough: one round without dynamic sampling; with it,
    once `prompts_per_step` groups are informative or the extra rounds are spent."""
    if not rounds:
        return False
    rollout = recipe.rollout
    if not rollout.dynamic_sampling or len(rounds) > rollout.max_extra_rounds:
        return True
    g = rollout.group_size
    found = sum(int(dapo.informative_groups(r.rewards, g).sum()) for r in rounds)
    return found >= rollout.prompts_per_step


def select(
    rounds: list[Round], recipe: Recipe, pad_id: int
) -> tuple[Samples, torch.Tensor, list[int], float, dict[str, float]]:
    """The step's samples, rewards `[N]`, example indices and scoring seconds from its rounds,
    and the dynamic/* figures (none without dynamic sampling): all of one round as it is, or
    the groups `dapo.choose_groups` picks, re-padded to the widest round."""
    rollout = recipe.rollout
    score_s = sum(r.score_s for r in rounds)
    if not rollout.dynamic_sampling:
        (only,) = rounds
        return only.samples, only.rewards, only.indices, score_s, {}
    g, wanted = rollout.group_size, rollout.prompts_per_step
    flags = [dapo.informative_groups(r.rewards, g) for r in rounds]
    chosen, filler = dapo.choose_groups(flags, wanted)
    sampled = sum(len(f) for f in flags)
    stats = dapo.DynamicStats(
        groups_sampled=sampled,
        groups_dropped=sampled - sum(int(f.sum()) for f in flags),
        extra_rounds=len(rounds) - 1,
        cap_hit=int(filler > 0),
        filled_groups=filler,
    )
    offsets = [0]
    for r in rounds:
        offsets.append(offsets[-1] + len(r.rewards))
    rows = [offsets[r] + i * g + j for r, i in chosen for j in range(g)]  # into every round's
    whole = _concat([r.samples for r in rounds], pad_id)
    rewards = torch.cat([r.rewards for r in rounds])[torch.tensor(rows)]  # [N]
    indices = [rounds[r].indices[i] for r, i in chosen]
    return _take(whole, rows), rewards, indices, score_s, stats.as_row()


def _pad(tensor: torch.Tensor, width: int, value: float, *, left: bool) -> torch.Tensor:
    """`[n, w, ...]` padded with `value` to `[n, width, ...]` on the left or the right of
    dim 1 (F.pad lists trailing dims first; the ones after dim 1 get no padding)."""
    extra = width - tensor.shape[1]
    trailing = [0, 0] * (tensor.dim() - 2)
    return F.pad(tensor, [*trailing, *((extra, 0) if left else (0, extra))], value=value)


def _concat(parts: list[Samples], pad_id: int) -> Samples:
    """Every round's rows one after the other, re-padded to the widest prompt (left) and
    completion (right); the rounds' seconds added up."""
    ts = [s.gen.completion_mask.shape[1] for s in parts]
    ps = [s.gen.input_ids.shape[1] - t for s, t in zip(parts, ts, strict=True)]
    wide_p, wide_t = max(ps), max(ts)

    def rows(tensors: list[torch.Tensor], value: float) -> torch.Tensor:
        return torch.cat(
            [
                torch.cat(
                    [
                        _pad(x[:, :p], wide_p, value, left=True),
                        _pad(x[:, p:], wide_t, value, left=False),
                    ],
                    dim=1,
                )
                for x, p in zip(tensors, ps, strict=True)
            ]
        )  # [sum n, P+T, ...]

    def completions(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        if any(x is None for x in tensors):
            return None
        return torch.cat([_pad(x, wide_t, 0.0, left=False) for x in tensors if x is not None])

    gens = [s.gen for s in parts]
    experts = [s.old_experts for s in parts]
    gen = Generation(
        input_ids=rows([g.input_ids for g in gens], pad_id),  # [N, P+T]
        attention_mask=rows([g.attention_mask for g in gens], 0),  # [N, P+T]
        completion_mask=completions([g.completion_mask for g in gens]),  # type: ignore[arg-type]
        truncated=torch.cat([g.truncated for g in gens]),  # [N]
        texts=[text for g in gens for text in g.texts],
        logprobs=completions([g.logprobs for g in gens]),  # [N, T]
    )
    return Samples(
        gen,
        completions([s.old_logprobs for s in parts]),  # type: ignore[arg-type]
        completions([s.ref_logprobs for s in parts]),
        None if experts[0] is None else rows(experts, routing.NO_EXPERT),  # type: ignore[arg-type]
        sum(s.sample_s for s in parts),
        sum(s.old_logprob_s for s in parts),
    )


def _take(samples: Samples, rows: list[int]) -> Samples:
    """`rows` of the samples, in that order."""
    index = torch.tensor(rows, device=samples.gen.input_ids.device)

    def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor[index.to(tensor.device)]

    gen = samples.gen
    return Samples(
        Generation(
            input_ids=gen.input_ids[index],
            attention_mask=gen.attention_mask[index],
            completion_mask=gen.completion_mask[index],
            truncated=gen.truncated[index],
            texts=[gen.texts[r] for r in rows],
            logprobs=pick(gen.logprobs),
        ),
        samples.old_logprobs[index],
        pick(samples.ref_logprobs),
        pick(samples.old_experts),
        samples.sample_s,
        samples.old_logprob_s,
    )
