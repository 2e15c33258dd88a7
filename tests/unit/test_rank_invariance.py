"""Scale-out pieces that need no second process: shares, environment, world-size checks,
rank-invariant sampling, and the gradient weighting that makes N ranks equal one process
(with negative controls for the per-rank normalisations it must not use)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from torch import Tensor

from gspo_cli.advantages import group_advantages
from gspo_cli.base import distributed
from gspo_cli.base.distributed import Cluster, from_env
from gspo_cli.base.errors import RecipeError, UserError
from gspo_cli.base.seeding import derive
from gspo_cli.losses import Mode
from gspo_cli.models.loading import load_policy
from gspo_cli.recipe import check_world_size, load_recipe
from gspo_cli.rollout.sampling import RowSampler, generate, top_p_filter
from gspo_cli.rollout.stages import RolloutBatch
from gspo_cli.scoring.completions import LogProbModel, completion_logprobs
from gspo_cli.update import _idle_pass, accumulate_gradients, minibatch_order

CPU = torch.device("cpu")

# --- Cluster and the torchrun environment -------------------------------------------------


def test_shares_are_contiguous_equal_and_cover_every_item() -> None:
    """12 items over 3 ranks: 0-3, 4-7, 8-11; uneven shares of 7 differ by at most one."""
    shares = [Cluster(rank=r, world_size=3).share(12) for r in range(3)]
    assert shares == [range(0, 4), range(4, 8), range(8, 12)]
    uneven = [Cluster(rank=r, world_size=3).uneven_share(7) for r in range(3)]
    assert [i for share in uneven for i in share] == list(range(7))
    assert {len(s) for s in uneven} <= {2, 3}
    with pytest.raises(ValueError, match="do not split evenly"):
        Cluster(rank=0, world_size=3).share(7)


def test_no_torchrun_environment_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without WORLD_SIZE (or with 1) the cluster is the single-process default."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert from_env() == Cluster() and not from_env().is_distributed
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert from_env() == Cluster()


def test_torchrun_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """WORLD_SIZE/RANK/LOCAL_RANK become the cluster; rank 0 alone is the main process."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cluster = from_env()
    assert (cluster.rank, cluster.world_size, cluster.local_rank) == (3, 4, 1)
    assert cluster.is_distributed and not cluster.is_main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(UserError, match=r"needs RANK in 0\.\.3"):
        from_env()


def test_world_size_must_divide_the_prompts_per_step() -> None:
    """16 prompts over 3 processes is refused, naming the valid counts and nearby sizes."""
    recipe = load_recipe(None)  # 16 prompts per step
    for ok in (1, 2, 4, 8, 16):
        check_world_size(recipe, ok)
    with pytest.raises(RecipeError) as info:
        check_world_size(recipe, 3)
    message = str(info.value)
    assert "16 prompts do not split evenly over 3 processes" in message, message
    assert "run on 1, 2, 4, 8, 16 processes" in message, message
    assert "a multiple of 3 such as 15 or 18" in message, message


# --- sampling that does not depend on how the batch is split -------------------------------


@pytest.fixture(scope="module")
def untrained(tiny_model_dir: Path) -> tuple[Any, Any]:
    model, tokenizer = load_policy(str(tiny_model_dir), "float32", CPU, lambda _: None)
    return model.eval(), tokenizer


def test_a_row_samples_the_same_whatever_shares_its_batch(untrained: tuple[Any, Any]) -> None:
    """Rows 3-5 of a 6-row batch, sampled alone with their seeds, give the same completions
    (different prompt lengths, so the padding differs too): what lets N ranks split a batch."""
    model, tokenizer = untrained
    prompts = ["37+45=", "1+2=", "99+9=", "5+55=", "12+34=", "7+8="]
    seeds = [derive(0, "sample", 1, row) for row in range(6)]
    whole = generate(model, tokenizer, prompts, max_new_tokens=8, temperature=1.3, seeds=seeds)
    part = generate(
        model, tokenizer, prompts[3:], max_new_tokens=8, temperature=1.3, seeds=seeds[3:]
    )
    assert whole.texts[3:] == part.texts
    other = generate(
        model, tokenizer, prompts, max_new_tokens=8, temperature=1.3, seeds=seeds[::-1]
    )
    assert other.texts != whole.texts, "the seeds should matter"


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 1.0), (1.5, 0.8)])
def test_row_sampler_draws_from_the_tempered_top_p_softmax(
    temperature: float, top_p: float
) -> None:
    """20,000 rows with their own seeds: token frequencies match softmax(logits / T) after
    top-p truncation within 4 standard errors; truncated tokens never appear."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])  # [V]
    n = 20_000
    sampler = RowSampler(range(n), temperature, top_p, CPU)
    scores = sampler(torch.zeros(n, 1), logits.expand(n, -1))  # [n, V]
    counts = torch.bincount(scores.argmax(dim=1), minlength=6).double()  # [V]
    expected = torch.softmax(top_p_filter(logits[None].double() / temperature, top_p), -1)[0]
    se = (expected * (1 - expected) / n).sqrt()  # [V]
    assert torch.all((counts / n - expected).abs() <= 4 * se + 1e-12), (counts / n, expected)
    assert torch.all(counts[expected == 0] == 0)


def test_top_p_filter_is_transformers_rule() -> None:
    """Our top-p filter keeps exactly the tokens transformers' TopPLogitsWarper keeps."""
    from transformers import TopPLogitsWarper

    scores = torch.randn(16, 50, generator=torch.Generator().manual_seed(0))
    for top_p in (0.1, 0.5, 0.9, 0.99):
        ours = top_p_filter(scores, top_p)
        theirs = TopPLogitsWarper(top_p)(torch.zeros(16, 1, dtype=torch.long), scores)
        assert torch.equal(ours.isinf(), theirs.isinf()), top_p


def test_minibatch_order_is_a_pure_function_of_seed_step_and_epoch() -> None:
    """Every rank and every resumed run compute the same permutation; it changes per step."""
    first = minibatch_order(32, seed=0, step=5, epoch=0)
    assert torch.equal(first, minibatch_order(32, seed=0, step=5, epoch=0))
    assert sorted(first.tolist()) == list(range(32))
    assert not torch.equal(first, minibatch_order(32, seed=0, step=6, epoch=0))
    assert not torch.equal(first, minibatch_order(32, seed=0, step=5, epoch=1))


# --- gradients: two simulated ranks versus one process ------------------------------------

ROWS = torch.tensor([0, 3, 4, 5, 6, 7])  # a minibatch: rank 0 owns 2 of its rows, rank 1 owns 4


@pytest.fixture(scope="module")
def rollout(tiny_model_dir: Path) -> tuple[Any, RolloutBatch]:
    """8 sampled completions (2 prompts × 4), cut to lengths 6, 3, 5, 2, 6, 4, 1, 6 as if EOS
    had come there, in float64; of two ranks, rank 0 owns rows 0-3, rank 1 rows 4-7."""
    model, tokenizer = load_policy(str(tiny_model_dir), "float32", CPU, lambda _: None)
    model = model.double()
    seeds = [derive(0, "sample", 1, row) for row in range(8)]
    prompts = ["12+34="] * 4 + ["5+6="] * 4
    sampled = generate(model, tokenizer, prompts, max_new_tokens=6, seeds=seeds)
    t = sampled.completion_mask.shape[1]
    lengths = torch.tensor([6, 3, 5, 2, 6, 4, 1, 6])
    mask = (torch.arange(t)[None] < lengths[:, None]).double()  # [8, T]
    p = sampled.input_ids.shape[1] - t
    gen = replace(
        sampled,
        attention_mask=torch.cat([sampled.attention_mask[:, :p], mask.long()], dim=1),
        completion_mask=mask,
    )
    with torch.no_grad():
        old = completion_logprobs(model, gen.input_ids, gen.attention_mask, t).double()
    old = old + 0.01 * torch.randn(old.shape, generator=torch.Generator().manual_seed(1))
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    adv, _ = group_advantages(rewards, 4)
    return model, RolloutBatch(gen, rewards, adv.double(), old, None)


def _grads(model: Any) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _fsdp_average(model: Any, per_rank: Callable[[int], None], world: int = 2) -> list[Tensor]:
    """What FSDP's reduce-scatter leaves: the mean over ranks of each rank's gradient."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for rank in range(world):
        model.zero_grad()
        per_rank(rank)
        total = [t + g for t, g in zip(total, _grads(model), strict=True)]
    return [t / world for t in total]


def _max_diff(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.fixture
def no_collectives(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a rank's share in this process: no idle passes, no all-reduce of the log-probs."""
    monkeypatch.setattr(distributed, "max_int", lambda cluster, value: value)
    monkeypatch.setattr(distributed, "all_reduce", lambda cluster, tensor, op="sum": tensor)


@pytest.mark.parametrize("mode", get_args(Mode))
def test_two_ranks_with_the_global_count_give_the_one_process_gradient(
    rollout: tuple[Any, RolloutBatch], no_collectives: None, mode: str
) -> None:
    """Each rank weighting its micro-batches by 2 · n_k / n (n: the whole minibatch), then
    FSDP's mean over ranks, equals one process on the whole minibatch (float64, 1e-12)."""
    model, batch = rollout
    recipe = load_recipe(None, [f"algo.mode={mode}", "train.microbatch_tokens=16"])
    model.zero_grad()
    accumulate_gradients(model, batch, ROWS, recipe)
    one_process = _grads(model)
    two_ranks = _fsdp_average(
        model,
        lambda r: accumulate_gradients(model, batch, ROWS, recipe, Cluster(r, 2)),
    )
    assert max(float(g.abs().max()) for g in one_process) > 1e-3, "need a real gradient"
    assert _max_diff(one_process, two_ranks) < 1e-12


def test_negative_control_per_rank_means_are_caught(rollout: tuple[Any, RolloutBatch]) -> None:
    """Normalising by a rank's own count instead of the global one changes the gradient by
    far more than the 1e-5 the two-process test allows: a per-rank response mean (the ranks
    hold 2 and 4 of the minibatch's rows) and a per-rank token mean (their token counts
    differ), while the token mean with the all-reduced token count matches exactly."""
    model, batch = rollout
    gen, t = batch.gen, batch.gen.completion_mask.shape[1]
    owned = [ROWS[ROWS < 4], ROWS[ROWS >= 4]]  # rank 0's and rank 1's rows of the minibatch

    def token_terms(rows: Tensor) -> tuple[Tensor, Tensor]:
        """Per-token surrogate −A·ratio and the mask of `rows` → [n, T] each."""
        logprobs = completion_logprobs(model, gen.input_ids[rows], gen.attention_mask[rows], t)
        ratio = torch.exp(logprobs - batch.old_logprobs[rows])  # [n, T]
        return -batch.advantages[rows, None] * ratio, gen.completion_mask[rows].double()

    def response_mean(rows: Tensor, count: float) -> None:
        terms, mask = token_terms(rows)
        per_response = (terms * mask).sum(1) / mask.sum(1)  # [n] token mean inside a response
        (per_response.sum() / count).backward()

    def token_mean(rows: Tensor, tokens: float) -> None:
        terms, mask = token_terms(rows)
        ((terms * mask).sum() / tokens).backward()

    world, n = 2, len(ROWS)
    all_tokens = float(gen.completion_mask[ROWS].sum())
    model.zero_grad()
    response_mean(ROWS, n)
    global_response = _grads(model)
    model.zero_grad()
    token_mean(ROWS, all_tokens)
    global_token = _grads(model)

    # Right: every rank divides by the global count (times N, as FSDP then averages).
    right_response = _fsdp_average(model, lambda r: response_mean(owned[r], n / world))
    per_rank_response = _fsdp_average(model, lambda r: response_mean(owned[r], len(owned[r])))
    right_token = _fsdp_average(model, lambda r: token_mean(owned[r], all_tokens / world))
    rank_tokens = [float(gen.completion_mask[rows].sum()) for rows in owned]
    per_rank_token = _fsdp_average(model, lambda r: token_mean(owned[r], rank_tokens[r]))

    assert rank_tokens[0] != rank_tokens[1], "the control needs unequal token counts"
    assert _max_diff(global_response, right_response) < 1e-12
    assert _max_diff(global_token, right_token) < 1e-12
    assert _max_diff(global_response, per_rank_response) > 1e-3
    assert _max_diff(global_token, per_rank_token) > 1e-3


def test_idle_pass_adds_exactly_nothing(rollout: tuple[Any, RolloutBatch]) -> None:
    """The zero-weight pass a rank with fewer micro-batches runs leaves every gradient 0."""
    model, batch = rollout
    model.zero_grad(set_to_none=False)
    _idle_pass(LogProbModel(model), batch.gen, row=2)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
