"""Chunked log-probs equal the full-logits computation, in value and gradient."""

from __future__ import annotations

import pytest
import torch

from gspo_cli.scoring.chunked import token_logprobs


def naive(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float):
    logits = hidden @ weight.T / temperature  # [N, T, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


@pytest.mark.parametrize("chunk", [0, 1, 4, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_value_and_gradients_match_full_logits(chunk: int, temperature: float) -> None:
    """Float64: log-probs and both gradients equal the naive path to 1e-12, any chunk size."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (3, 5), generator=gen)
    upstream = torch.randn(3, 5, dtype=torch.float64, generator=gen)

    expected = naive(hidden, weight, targets, temperature)
    (expected * upstream).sum().backward()
    grad_h, grad_w = hidden.grad.clone(), weight.grad.clone()  # type: ignore[union-attr]
    hidden.grad = weight.grad = None

    got = token_logprobs(hidden, weight, targets, temperature=temperature, chunk_tokens=chunk)
    (got * upstream).sum().backward()
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(hidden.grad, grad_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(weight.grad, grad_w, rtol=0, atol=1e-12)


def test_bf16_inputs_are_computed_in_float32() -> None:
    """bf16 hidden states and weights give float32 log-probs equal to an fp32 computation."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, 32, generator=gen).bfloat16()
    weight = torch.randn(64, 32, generator=gen).bfloat16()
    targets = torch.randint(0, 64, (4, 6), generator=gen)
    got = token_logprobs(hidden, weight, targets, chunk_tokens=5)
    assert got.dtype == torch.float32
    expected = naive(hidden.float(), weight.float(), targets, 1.0)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_large_logits_stay_finite() -> None:
    """Logits in the thousands do not overflow: logsumexp is stable."""
    hidden = torch.full((1, 2, 4), 100.0, requires_grad=True)
    weight = torch.eye(4) * 50
    targets = torch.tensor([[0, 3]])
    got = token_logprobs(hidden, weight, targets, chunk_tokens=1)
    got.sum().backward()
    # All four logits are equal (5000), so each log-prob is -log(4).
    torch.testing.assert_close(got, torch.full((1, 2), -torch.log(torch.tensor(4.0)).item()))
    assert torch.isfinite(hidden.grad).all()  # type: ignore[arg-type]


def test_chunk_default_is_the_recipes() -> None:
    """Called without a recipe, the log-prob functions chunk as the default recipe does."""
    import inspect

    from gspo_cli.recipe import load_recipe
    from gspo_cli.scoring import completions as scoring

    recipe_default = load_recipe(None).train.logprob_chunk_tokens
    for function in (token_logprobs, scoring.completion_logprobs, scoring.batched_logprobs):
        default = inspect.signature(function).parameters["chunk_tokens"].default
        assert default == recipe_default, f"{function.__name__}: {default} != {recipe_default}"
