"""Mixture-of-experts routing: drift arithmetic, router hooks, Routing Replay, and the
training loop's router metrics (tiny Qwen3-MoE built from config, untrained)."""

from __future__ import annotations

import copy
import doctest
from pathlib import Path
from typing import Any

import pytest
import torch

from gspo_cli.base.errors import UserError
from gspo_cli.commands.train import run
from gspo_cli.models.loading import load_policy
from gspo_cli.recipe import load_recipe
from gspo_cli.rollout.sampling import Generation, generate
from gspo_cli.rundir.metrics import read_metrics
from gspo_cli.scoring import microbatch, routing
from gspo_cli.scoring.completions import batched_logprobs, completion_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")

# --- drift arithmetic ------------------------------------------------------------------------


def test_drift_compares_expert_sets_not_order() -> None:
    """Same experts in another order is no drift; one expert swapped is."""
    old = torch.tensor([[[[0, 1], [2, 3], [4, 5]]]])  # [B=1, S=1, L=3, k=2]
    new = torch.tensor([[[[1, 0], [2, 7], [5, 4]]]])  # layer 0 reordered, 1 changed, 2 reordered
    # 1 of 3 (token, layer) positions drifted; the one token has a drifted layer.
    assert routing.router_drift(old, new, torch.ones(1, 1)) == (1 / 3, 1.0)


def test_drift_counts_only_masked_tokens() -> None:
    """Unmasked tokens (prompt, padding) never count, however much they changed."""
    old = torch.zeros(2, 3, 2, 2, dtype=torch.long)  # [B=2, S=3, L=2, k=2]
    old[..., 1] = 1  # every position chose {0, 1}
    new = old.clone()
    new[0, 0, :, 1] = 5  # row 0 token 0: both layers changed (masked out below)
    new[0, 2, 1, 0] = 6  # row 0 token 2: layer 1 changed
    new[1, 1, 0, :] = torch.tensor([1, 0])  # row 1 token 1: same set, reordered
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])  # 4 real tokens, 8 (token, layer) positions
    counts = routing.drift_counts(old, new, mask)
    assert counts.tolist() == [1.0, 8.0, 1.0, 4.0]
    assert routing.router_drift(old, new, mask) == (1 / 8, 1 / 4)


def test_drift_without_tokens_is_zero() -> None:
    """An empty mask gives 0 rather than a division by zero."""
    idx = torch.zeros(1, 2, 1, 2, dtype=torch.long)
    assert routing.router_drift(idx, idx + 1, torch.zeros(1, 2)) == (0.0, 0.0)


def test_meter_sums_passes_then_starts_over() -> None:
    """Fractions are of the summed counts (not a mean of fractions); reading resets."""
    meter = routing.DriftMeter()
    meter.add(torch.tensor([1.0, 4.0, 1.0, 2.0], dtype=torch.float64))
    meter.add(torch.tensor([0.0, 4.0, 0.0, 2.0], dtype=torch.float64))
    assert meter.metrics() == {"router_drift": 1 / 8, "router_drift_tokens": 1 / 4}
    assert meter.metrics() == {"router_drift": 0.0, "router_drift_tokens": 0.0}


def test_routing_docstring_example() -> None:
    """The doctest in `router_drift` holds."""
    result = doctest.testmod(routing, extraglobs={"torch": torch})
    assert result.attempted >= 1 and result.failed == 0, result


def test_replayed_weights_equal_the_routers_own() -> None:
    """Given the router's own top-k, the recomputed weights are its weights exactly."""
    torch.manual_seed(3)
    logits = torch.randn(5, 8)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float)
    top, idx = torch.topk(probs, 2, dim=-1)
    assert torch.equal(routing.routing_weights(logits, idx, normalise=False), top)
    top /= top.sum(dim=-1, keepdim=True)
    assert torch.equal(routing.routing_weights(logits, idx, normalise=True), top)


# --- hooks on a real tiny Qwen3-MoE ------------------------------------------------------------


@pytest.fixture(scope="module")
def moe(tiny_moe_dir: Path) -> tuple[Any, Generation]:
    """The untrained tiny MoE and 8 sampled completions of varied lengths."""
    model, tokenizer = load_policy(str(tiny_moe_dir), "float32", torch.device("cpu"), print)
    torch.manual_seed(3)
    prompts = ["12+34=", "5+6=", "123+4=", "7="] * 2
    gen = generate(model, tokenizer, prompts, max_new_tokens=6)
    return model, gen


def _old_choice(model: Any, gen: Generation, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """π_old's log-probs and recorded experts, as `rollout.sample` computes them."""
    routers = routing.find_routers(model)
    n, width = gen.input_ids.shape
    into = routing.empty_choice(routers, n, width, gen.input_ids.device)
    p = width - gen.completion_mask.shape[1]
    around = routing.recording(routers, into, p)
    logprobs = batched_logprobs(model, gen, temperature=1.0, max_tokens=budget, around=around)
    return logprobs, into


def _pass(
    model: Any, gen: Generation, mb: microbatch.MicroBatch, replay: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch forward under a tap -> (log-probs [n_k, T_k], natural experts)."""
    p = gen.input_ids.shape[1] - gen.completion_mask.shape[1]
    forced = None if replay is None else microbatch.take(replay, mb, p)
    with routing.RouterTap(routing.find_routers(model), replay=forced) as tap:
        lp = completion_logprobs(
            model,
            microbatch.take(gen.input_ids, mb, p),
            microbatch.take(gen.attention_mask, mb, p),
            mb.completion_len,
        )
    return lp, tap.experts(len(mb.rows))


def test_tap_records_every_layer_in_the_batch_layout(moe: tuple[Any, Generation]) -> None:
    """The recorded choice is [N, P+T, 4 layers, top-2], real experts wherever a pass ran."""
    model, gen = moe
    assert len(routing.find_routers(model)) == 4
    _, experts = _old_choice(model, gen, budget=0)
    n, width = gen.input_ids.shape
    assert experts.shape == (n, width, 4, 2) and experts.dtype == routing.EXPERT_DTYPE
    assert experts.min() >= 0 and experts.max() < 8  # one pass covers every column
    assert (experts[..., 0] != experts[..., 1]).all()  # top-2 are two distinct experts


def test_recorded_columns_follow_micro_batches(moe: tuple[Any, Generation]) -> None:
    """Split into micro-batches, each row's real columns get the same experts as unsplit;
    only left-padding columns no micro-batch covered stay NO_EXPERT."""
    model, gen = moe
    _, whole = _old_choice(model, gen, budget=0)
    _, split = _old_choice(model, gen, budget=12)
    real = gen.attention_mask.bool()  # [N, P+T]
    assert torch.equal(split[real], whole[real])
    assert (split == routing.NO_EXPERT).any(), "the test needs uncovered padding columns"
    uncovered = (split == routing.NO_EXPERT).all(dim=-1).all(dim=-1)  # [N, P+T]
    assert not (uncovered & real).any()


def test_replay_with_unchanged_weights_equals_plain_logprobs(moe: tuple[Any, Generation]) -> None:
    """Replaying π_old's experts (recorded in another micro-batch layout) leaves log-probs
    bit for bit equal and router drift exactly 0."""
    model, gen = moe
    _, old_experts = _old_choice(model, gen, budget=0)
    rows = torch.tensor([6, 1, 3, 4, 0])
    plans = microbatch.plan(gen.attention_mask, gen.completion_mask, rows, budget=12)
    assert len(plans) > 1
    for mb in plans:
        plain, natural = _pass(model, gen, mb)
        replayed, natural_under_replay = _pass(model, gen, mb, replay=old_experts)
        assert torch.equal(replayed, plain)
        assert torch.equal(natural_under_replay, natural)
        p = gen.input_ids.shape[1] - gen.completion_mask.shape[1]
        old = microbatch.take(old_experts, mb, p)
        mask = routing._columns_mask(gen.completion_mask, mb, p)
        assert mask.sum() > 0
        assert routing.router_drift(old, natural, mask) == (0.0, 0.0)


def test_replay_forces_the_given_experts_and_the_router_still_learns(
    moe: tuple[Any, Generation],
) -> None:
    """Replaying other experts changes the log-probs; the tap still reports the router's own
    choice (the first layer's input is unchanged, so its choice is π_old's); every router's
    weight gets a gradient."""
    model, gen = moe
    _, old_experts = _old_choice(model, gen, budget=0)
    other = (old_experts + 1) % 8  # every position: a different pair of experts
    (mb,) = microbatch.plan(gen.attention_mask, gen.completion_mask, torch.arange(8), budget=0)
    plain, _ = _pass(model, gen, mb)
    model.zero_grad()
    forced, natural = _pass(model, gen, mb, replay=other)
    assert (forced - plain).abs().max() > 1e-4
    p = gen.input_ids.shape[1] - gen.completion_mask.shape[1]
    assert torch.equal(natural[:, :, 0], microbatch.take(old_experts, mb, p)[:, :, 0])
    forced.sum().backward()
    for router in routing.find_routers(model):
        assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0
    model.zero_grad()


def _forward(
    model: Any, gen: Generation, replay: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One whole-batch forward -> (log-probs [N, T], the routers' own experts, the experts
    actually used), each experts tensor [N, P+T, L, k]. The second tap is registered after the
    replaying one, so its hooks see the replayed output."""
    routers = routing.find_routers(model)
    n, t = gen.input_ids.shape[0], gen.completion_mask.shape[1]
    own, used = routing.RouterTap(routers, replay=replay), routing.RouterTap(routers)
    with own, used, torch.no_grad():
        lp = completion_logprobs(model, gen.input_ids, gen.attention_mask, t)
    return lp, own.experts(n), used.experts(n)


def test_replay_removes_router_drift_from_token_ratios(moe: tuple[Any, Generation]) -> None:
    """One fixed batch, θ0 -> θ1 by a fixed-seed nudge of every router (5% of each router
    weight's std). On completion tokens whose expert set drifted in some layer, replaying
    π_old's experts shrinks the mean |log π_θ1 - log π_θ0| to under a fifth of the plain pass's
    (measured for nudge seeds 0-3: 0.02-0.07 of it; seed 0: 0.00017 vs 0.0073); where no
    token up to the predicting one drifted, the two passes agree bit for bit; and the replayed
    pass actually routes exactly as π_old did."""
    model0, gen = moe
    lp0, old, _ = _forward(model0, gen)
    model1 = copy.deepcopy(model0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for router in routing.find_routers(model1):
            w = router.weight
            w.add_(0.05 * w.std() * torch.randn(w.shape, generator=generator))
    plain, natural, _ = _forward(model1, gen)
    replayed, _, used = _forward(model1, gen, replay=old)

    p = gen.input_ids.shape[1] - gen.completion_mask.shape[1]
    real = gen.attention_mask.bool()  # [N, P+T]
    sets_differ = old.sort(dim=-1).values != natural.sort(dim=-1).values  # [N, P+T, L, k]
    drifted = sets_differ.any(dim=-1).any(dim=-1) & real  # [N, P+T]: any layer
    completion = gen.completion_mask.bool()  # [N, T]
    on_drifted = drifted[:, p:] & completion  # [N, T]
    # Token p+t is predicted from column p+t-1: clean when no column up to that one drifted.
    clean = (drifted.cumsum(dim=1)[:, p - 1 : -1] == 0) & completion  # [N, T]
    assert on_drifted.sum() >= 5 and clean.sum() >= 5, "the nudge must drift some tokens only"

    plain_gap = (plain - lp0).abs()[on_drifted].mean()
    replay_gap = (replayed - lp0).abs()[on_drifted].mean()
    assert plain_gap > 1e-3
    assert replay_gap < 0.2 * plain_gap
    assert torch.equal(replayed[clean], plain[clean])
    columns = torch.cat([torch.zeros_like(real[:, :p]), completion], dim=1)  # [N, P+T]
    assert routing.router_drift(old, natural, columns)[0] > 0.03
    assert routing.router_drift(old, used, columns) == (0.0, 0.0)


def test_dense_model_has_no_routers(tiny_model_dir: Path) -> None:
    """A dense Qwen3 has nothing to record: no routers."""
    model, _ = load_policy(str(tiny_model_dir), "float32", torch.device("cpu"), print)
    assert routing.find_routers(model) == []


# --- the training loop ---------------------------------------------------------------------------


def digit_share(completion: str, reference: str) -> float:
    """A reward an untrained model's random completions vary on (their share of digits),
    so advantages are not all zero."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


SMALL = (
    "reward=test_routing:digit_share",
    "train.steps=2",
    "train.eval_every=0",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=4",
    "algo.minibatches=2",
    "data.eval_size=8",
    "train.microbatch_tokens=40",
)


def _train_rows(model_dir: Path, out: Path, *sets: str) -> list[dict[str, Any]]:
    recipe = load_recipe(None, [f"model.name={model_dir}", *SMALL, *sets])
    out.mkdir()
    run(recipe, out, announce=lambda _: None)
    return [r for r in read_metrics(out / "metrics.jsonl") if "eval_accuracy" not in r]


@pytest.mark.parametrize("replay", [False, True])
def test_router_drift_is_zero_without_updates(
    tiny_moe_dir: Path, tmp_path: Path, replay: bool
) -> None:
    """With lr 0 the policy never moves: drift is exactly 0 at every step (replay or not)."""
    rows = _train_rows(
        tiny_moe_dir, tmp_path / "run", "optim.lr=0", f"algo.routing_replay={replay}"
    )
    assert [(r["router_drift"], r["router_drift_tokens"]) for r in rows] == [(0.0, 0.0)] * 2


def test_router_drift_is_positive_after_updates(tiny_moe_dir: Path, tmp_path: Path) -> None:
    """With a large lr the last minibatch routes differently from π_old, by a fraction of
    positions below the fraction of tokens (a token drifts when any of its 4 layers does)."""
    rows = _train_rows(tiny_moe_dir, tmp_path / "run", "optim.lr=1e-2")
    for r in rows:
        assert 0 < r["router_drift"] <= r["router_drift_tokens"] <= 1, r


def test_dense_run_has_no_router_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A dense model's rows carry no router keys."""
    rows = _train_rows(tiny_model_dir, tmp_path / "run", "train.steps=1")
    assert not any(k.startswith("router") for r in rows for k in r)


def test_replay_on_a_dense_model_is_refused_before_training(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """routing_replay with a dense model is a one-line user error; nothing is trained."""
    with pytest.raises(UserError, match=r"algo.routing_replay: model .* has no Qwen3-MoE routers"):
        _train_rows(tiny_model_dir, tmp_path / "run", "algo.routing_replay=true")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_moe_rows_carry_exactly_the_documented_keys(tiny_moe_dir: Path, tmp_path: Path) -> None:
    """A MoE run's train rows: the README's train keys plus its moe keys, nothing else."""
    import re

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^\| `([\w/]+)` \| (\w+) \|", section, re.M)
    expected = {key for key, row in table if row in ("train", "both", "moe")}
    assert {"router_drift", "router_drift_tokens"} <= expected
    rows = _train_rows(tiny_moe_dir, tmp_path / "run", "train.steps=1")
    assert set(rows[0]) == expected, set(rows[0]) ^ expected
