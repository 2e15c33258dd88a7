"""Unit tests for gspo_cli.rollout.sampling: stop masks, log-probabilities, generation and loading.

The models are the untrained tiny Qwen3 from `tiny_model_dir` and, where a completion has to
stop, a copy of it overfitted in well under a second to a handful of fixed prompt -> answer
pairs (some ending in EOS, one never ending). Every expectation is compared to a hand-rolled
reference that runs the model on one unpadded sequence at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from gspo_cli.base.errors import ModelError
from gspo_cli.models.loading import load_policy, pick_dtype
from gspo_cli.models.tiny import build_model, build_tokenizer
from gspo_cli.rollout.sampling import completion_mask, eos_ids, generate
from gspo_cli.scoring.completions import completion_logprobs

CPU = torch.device("cpu")
ATOL = 1e-5
PAD_ID, EOS_ID = 0, 1  # the character tokenizer's ids

# Overfitting targets: "<eos>" is the EOS token; "9+9=" never stops within MAX_NEW.
TARGETS = {"1+1=": "2<eos>", "22+33=": "55<eos>", "9+9=": "18181818181818", "7=": "<eos>"}
MAX_NEW = 6


def _ids(rows: list[list[int]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.long)


def _quiet(_: str) -> None:
    """An `announce` callback that prints nothing."""


def _load(path: Path | str, dtype: str = "float32") -> tuple[Any, Any]:
    model, tokenizer = load_policy(str(path), dtype, CPU, _quiet)
    model.eval()
    return model, tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def untrained(tiny_model_dir: Path) -> tuple[Any, Any]:
    """The untrained tiny Qwen3 and its tokenizer, loaded through `load_policy`."""
    return _load(tiny_model_dir)


@pytest.fixture(scope="module")
def stopping(tiny_model_dir: Path, one_thread: None) -> tuple[Any, Any]:
    """A tiny Qwen3 overfitted to TARGETS, so greedy decoding stops (or not) where we say."""
    model, tokenizer = _load(tiny_model_dir)
    rows = [
        (
            tokenizer(p, add_special_tokens=False)["input_ids"],
            tokenizer(c, add_special_tokens=False)["input_ids"],
        )
        for p, c in TARGETS.items()
    ]
    width = max(len(p) + len(c) for p, c in rows)
    ids = torch.full((len(rows), width), PAD_ID)  # [B, L] right-padded
    attn = torch.zeros((len(rows), width), dtype=torch.long)  # [B, L]
    labels = torch.full((len(rows), width), -100)  # [B, L] loss on the completion only
    for i, (p, c) in enumerate(rows):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attn[i, : len(p) + len(c)] = 1
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(150):
            loss = model(input_ids=ids, attention_mask=attn, labels=labels, use_cache=False).loss
            loss.backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            if loss.item() < 0.01:
                break
    model.eval()
    for prompt, target in TARGETS.items():  # precondition, checked without `generate`
        want = tokenizer(target, add_special_tokens=False)["input_ids"][:8]
        got = _greedy_reference(model, tokenizer, prompt, 8, [EOS_ID])
        assert got == want, f"overfitting failed: {prompt!r} -> {got}, wanted {want}"
    return model, tokenizer


@torch.no_grad()
def _greedy_reference(
    model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, stop_ids: list[int]
) -> list[int]:
    """Greedy completion ids of one unpadded prompt: argmax of a full forward each step."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids + out]), use_cache=False).logits  # [1, L, V]
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
        if nxt in stop_ids:
            break
    return out


@torch.no_grad()
def _logprobs_reference(model: Any, sequence: list[int], prompt_len: int, t: float) -> Tensor:
    """log softmax(logits / t) of each completion token of one unpadded sequence -> [T]."""
    logits = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0]  # [L, V]
    logprobs = torch.log_softmax(logits.float() / t, dim=-1)  # [L, V]
    predicted = torch.tensor(sequence[prompt_len:])  # [T]
    # position j predicts token j + 1: the completion is predicted by prompt_len-1 .. L-2
    return logprobs[prompt_len - 1 : -1].gather(-1, predicted.unsqueeze(-1)).squeeze(-1)


# --- completion_mask -------------------------------------------------------------------------


def test_mask_stops_at_first_eos_inclusive() -> None:
    """Ones up to and including the first EOS, zeros after it."""
    mask = completion_mask(_ids([[5, 6, 1, 7, 8], [5, 1, 6, 7, 8]]), [1])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(mask, expected), mask
    assert mask.dtype == torch.float32, mask.dtype


def test_mask_without_eos_is_all_ones() -> None:
    """A completion that never stops is real on every position."""
    mask = completion_mask(_ids([[5, 6, 7, 8]]), [1])
    assert torch.equal(mask, torch.ones(1, 4)), mask


def test_mask_eos_at_position_zero_keeps_only_it() -> None:
    """An immediate EOS leaves exactly one real token, the EOS itself."""
    mask = completion_mask(_ids([[1, 5, 6, 7]]), [1])
    assert torch.equal(mask, torch.tensor([[1.0, 0.0, 0.0, 0.0]])), mask


def test_mask_with_several_stop_ids_uses_the_earliest() -> None:
    """With stop ids {1, 9}, whichever appears first ends the completion."""
    mask = completion_mask(_ids([[5, 9, 6, 1], [5, 6, 1, 9], [5, 6, 7, 8]]), [1, 9])
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float32)
    assert torch.equal(mask, expected), mask


def test_mask_zeroes_further_eos_and_pad_after_the_first() -> None:
    """Repeated EOS and pad (== EOS or not) after the first EOS are all masked out."""
    mask = completion_mask(_ids([[5, 1, 1, 1, 0, 0], [1, 0, 1, 0, 1, 0]]), [1])
    expected = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(mask, expected), mask
    pad_is_eos = completion_mask(_ids([[5, 6, 1, 1, 1]]), [1])
    assert torch.equal(pad_is_eos, torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])), pad_is_eos


# --- completion_logprobs ---------------------------------------------------------------------

# Rows of different prompt and completion lengths; completions stop with EOS (1) or run to the
# end. The batch left-pads prompts and right-pads completions with PAD, as `generate` does.
_PROMPTS = [[4, 39, 4, 43], [5, 5, 39, 6, 6, 43], [12, 43]]
_COMPLETIONS = [[5, 1], [8, 8, 9, 1], [4, 11, 4, 11, 4]]


def _left_padded_batch() -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, completion_mask) of _PROMPTS + _COMPLETIONS."""
    p_len = max(len(p) for p in _PROMPTS)
    t_len = max(len(c) for c in _COMPLETIONS)
    ids = torch.full((len(_PROMPTS), p_len + t_len), PAD_ID)  # [N, P+T]
    attn = torch.zeros_like(ids)  # [N, P+T]
    for i, (p, c) in enumerate(zip(_PROMPTS, _COMPLETIONS, strict=True)):
        ids[i, p_len - len(p) : p_len] = torch.tensor(p)
        ids[i, p_len : p_len + len(c)] = torch.tensor(c)
        attn[i, p_len - len(p) : p_len + len(c)] = 1
    return ids, attn, attn[:, p_len:].float()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_unpadded_per_row_reference(
    untrained: tuple[Any, Any], temperature: float
) -> None:
    """Batched left-padded log-probs equal each row's unpadded log_softmax(logits / T)."""
    model, _ = untrained
    ids, attn, mask = _left_padded_batch()
    with torch.no_grad():
        got = completion_logprobs(model, ids, attn, mask.shape[1], temperature)  # [N, T]
    assert got.shape == mask.shape, got.shape
    for i, (p, c) in enumerate(zip(_PROMPTS, _COMPLETIONS, strict=True)):
        want = _logprobs_reference(model, p + c, len(p), temperature)  # [len(c)]
        diff = (got[i, : len(c)] - want).abs().max().item()
        assert diff < ATOL, f"row {i} at T={temperature}: max |diff| {diff:.2e}"
        assert torch.isfinite(got[i, : len(c)]).all(), got[i]


def test_logprobs_temperature_divides_the_logits(untrained: tuple[Any, Any]) -> None:
    """At T=0.5 the result is the T=0.5 reference and differs from the T=1 one."""
    model, _ = untrained
    ids, attn, mask = _left_padded_batch()
    with torch.no_grad():
        hot = completion_logprobs(model, ids, attn, mask.shape[1], 0.5)  # [N, T]
    p, c = _PROMPTS[1], _COMPLETIONS[1]
    at_half = _logprobs_reference(model, p + c, len(p), 0.5)
    at_one = _logprobs_reference(model, p + c, len(p), 1.0)
    assert (hot[1, : len(c)] - at_half).abs().max().item() < ATOL, (hot[1], at_half)
    assert (hot[1, : len(c)] - at_one).abs().max().item() > 1e-3, "temperature had no effect"


def test_logprobs_are_log_probabilities(untrained: tuple[Any, Any]) -> None:
    """Every masked log-prob is <= 0 and finite."""
    model, _ = untrained
    ids, attn, mask = _left_padded_batch()
    with torch.no_grad():
        got = completion_logprobs(model, ids, attn, mask.shape[1])
    real = got[mask.bool()]
    assert torch.isfinite(real).all() and (real <= 0).all(), real


# --- generate --------------------------------------------------------------------------------


def test_greedy_matches_per_prompt_reference_and_is_deterministic(
    untrained: tuple[Any, Any],
) -> None:
    """Batched greedy completions (mixed prompt lengths) equal a one-prompt argmax loop."""
    model, tokenizer = untrained
    prompts = ["37+45=", "1+2=", "99+99=", "5="]
    first = generate(model, tokenizer, prompts, max_new_tokens=8, greedy=True)
    again = generate(model, tokenizer, prompts, max_new_tokens=8, greedy=True)
    assert torch.equal(first.input_ids, again.input_ids), "greedy decoding is not deterministic"
    stops = eos_ids(model, tokenizer)
    for i, prompt in enumerate(prompts):
        want = _greedy_reference(model, tokenizer, prompt, 8, stops)
        real = first.completion_ids[i][first.completion_mask[i].bool()].tolist()
        assert real == want, f"{prompt!r}: batched {real} != reference {want}"


def test_left_padded_prompts_decode_as_when_alone(untrained: tuple[Any, Any]) -> None:
    """A short prompt padded on the left in a batch gets the same greedy completion as alone."""
    model, tokenizer = untrained
    prompts = ["99+99=", "1+2=", "5="]
    batch = generate(model, tokenizer, prompts, max_new_tokens=8, greedy=True)
    width = len(prompts[0])
    for i, prompt in enumerate(prompts):
        pad = width - len(prompt)
        expected_prompt = [PAD_ID] * pad + tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert batch.input_ids[i, :width].tolist() == expected_prompt, batch.input_ids[i]
        assert batch.attention_mask[i, :width].tolist() == [0] * pad + [1] * len(prompt)
        alone = generate(model, tokenizer, [prompt], max_new_tokens=8, greedy=True)
        assert batch.completion_ids[i].tolist() == alone.completion_ids[0].tolist(), prompt
        assert batch.texts[i] == alone.texts[0], (batch.texts[i], alone.texts[0])


def test_generation_shapes_agree(stopping: tuple[Any, Any]) -> None:
    """input_ids and attention_mask are [N, P+T], completion_mask and ids [N, T], truncated [N]."""
    model, tokenizer = stopping
    gen = generate(model, tokenizer, list(TARGETS), max_new_tokens=MAX_NEW, greedy=True)
    n, p = len(TARGETS), max(len(k) for k in TARGETS)
    assert gen.input_ids.shape == (n, p + MAX_NEW), gen.input_ids.shape
    assert gen.attention_mask.shape == gen.input_ids.shape, gen.attention_mask.shape
    assert gen.completion_mask.shape == (n, MAX_NEW), gen.completion_mask.shape
    assert gen.completion_ids.shape == (n, MAX_NEW), gen.completion_ids.shape
    assert gen.truncated.shape == (n,) and gen.truncated.dtype == torch.bool, gen.truncated
    assert len(gen.texts) == n, gen.texts


def test_generation_masks_stop_at_eos(stopping: tuple[Any, Any]) -> None:
    """completion_mask covers each answer plus its EOS; attention_mask = prompt mask ++ it."""
    model, tokenizer = stopping
    gen = generate(model, tokenizer, list(TARGETS), max_new_tokens=MAX_NEW, greedy=True)
    # answers: "2<eos>" (2), "55<eos>" (3), "181818" (6, no EOS), "<eos>" (1)
    expected = torch.tensor(
        [[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]],
        dtype=torch.float32,
    )
    assert torch.equal(gen.completion_mask, expected), gen.completion_mask
    width = gen.input_ids.shape[1] - MAX_NEW
    assert torch.equal(gen.attention_mask[:, width:], expected.long()), gen.attention_mask
    eos_rows = gen.completion_ids[[0, 1, 3]][expected[[0, 1, 3]].bool()].tolist()
    assert eos_rows.count(EOS_ID) == 3, gen.completion_ids


def test_generation_texts_hold_only_the_real_completion(stopping: tuple[Any, Any]) -> None:
    """texts decode the masked tokens: no EOS, no pad, nothing generated after the stop."""
    model, tokenizer = stopping
    gen = generate(model, tokenizer, list(TARGETS), max_new_tokens=MAX_NEW, greedy=True)
    assert gen.texts == ["2", "55", "181818", ""], gen.texts


def test_truncated_is_true_exactly_without_eos(stopping: tuple[Any, Any]) -> None:
    """Only the row that never emits EOS within max_new_tokens is truncated."""
    model, tokenizer = stopping
    gen = generate(model, tokenizer, list(TARGETS), max_new_tokens=MAX_NEW, greedy=True)
    assert gen.truncated.tolist() == [False, False, True, False], gen.truncated


def test_generation_stops_early_when_every_row_ended(stopping: tuple[Any, Any]) -> None:
    """With only stopping prompts, T is the longest completion (3), not max_new_tokens."""
    model, tokenizer = stopping
    gen = generate(model, tokenizer, ["1+1=", "22+33=", "7="], max_new_tokens=MAX_NEW, greedy=True)
    assert gen.completion_mask.shape == (3, 3), gen.completion_mask.shape
    assert gen.truncated.tolist() == [False, False, False], gen.truncated
    assert gen.texts == ["2", "55", ""], gen.texts


def test_greedy_completion_logprobs_are_the_row_maxima(stopping: tuple[Any, Any]) -> None:
    """Scoring a greedy generation gives, at each real token, the largest log-prob."""
    model, tokenizer = stopping
    gen = generate(model, tokenizer, list(TARGETS), max_new_tokens=MAX_NEW, greedy=True)
    t = gen.completion_mask.shape[1]
    with torch.no_grad():
        got = completion_logprobs(model, gen.input_ids, gen.attention_mask, t)  # [N, T]
        out = model(input_ids=gen.input_ids, attention_mask=gen.attention_mask).logits
    best = torch.log_softmax(out[:, -t - 1 : -1].float(), dim=-1).amax(dim=-1)  # [N, T]
    mask = gen.completion_mask.bool()
    assert (got[mask] - best[mask]).abs().max().item() < ATOL, (got, best)


def test_sampling_with_a_fixed_seed_is_repeatable(untrained: tuple[Any, Any]) -> None:
    """The same torch seed gives the same samples; another seed gives different ones."""
    model, tokenizer = untrained
    prompts = ["37+45=", "1+2=", "99+99="] * 2

    def sample(seed: int) -> Tensor:
        torch.manual_seed(seed)
        gen = generate(model, tokenizer, prompts, max_new_tokens=10, temperature=1.5)
        return gen.input_ids

    first, second, other = sample(0), sample(0), sample(1)
    assert torch.equal(first, second), "same seed, different samples"
    assert not torch.equal(first, other), "different seeds gave identical samples"


# --- load_policy -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["./does-not-exist", "/nonexistent/dir"])
def test_missing_local_path_is_a_model_error(name: str) -> None:
    """A local-looking path with no directory fails with a ModelError naming the path."""
    with pytest.raises(ModelError) as info:
        load_policy(name, "auto", CPU, _quiet)
    assert repr(name) in str(info.value), str(info.value)


def test_unknown_hub_id_offline_is_a_model_error() -> None:
    """Offline, an unknown hub id fails with a ModelError that suggests a local directory."""
    name = "nobody/no-such-model-xyz"
    with pytest.raises(ModelError) as info:
        load_policy(name, "auto", CPU, _quiet)
    message = str(info.value)
    assert repr(name) in message, message
    assert "offline" in message and "local directory" in message, message


def test_tokenizer_without_pad_pads_with_eos(tmp_path: Path) -> None:
    """A tokenizer saved without a pad token loads with pad == EOS."""
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    tokenizer.save_pretrained(tmp_path)
    model = build_model(52, PAD_ID, EOS_ID)
    model.save_pretrained(tmp_path)
    _, loaded = _load(tmp_path)
    assert loaded.pad_token_id == loaded.eos_token_id == EOS_ID, (
        loaded.pad_token_id,
        loaded.eos_token_id,
    )


def test_loaded_tokenizer_pads_on_the_left(tmp_path: Path) -> None:
    """Even a tokenizer saved with padding_side='right' is loaded padding on the left."""
    tokenizer = build_tokenizer()
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(tmp_path)
    build_model(len(tokenizer), PAD_ID, EOS_ID).save_pretrained(tmp_path)
    _, loaded = _load(tmp_path)
    assert loaded.padding_side == "left", loaded.padding_side
    batch = loaded(["1+2=", "5="], padding=True, add_special_tokens=False)["input_ids"]
    assert batch[1][:2] == [PAD_ID, PAD_ID], batch


@pytest.mark.parametrize(
    ("dtype", "expected"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)]
)
def test_load_policy_uses_the_requested_dtype(
    tiny_model_dir: Path, dtype: str, expected: torch.dtype
) -> None:
    """Parameters come back in the dtype asked for."""
    model, _ = _load(tiny_model_dir, dtype)
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {expected}, dtypes


# --- pick_dtype ------------------------------------------------------------------------------


def test_auto_dtype_on_cpu_is_float32() -> None:
    """'auto' never picks a half-precision type on CPU."""
    assert pick_dtype("auto", CPU) is torch.float32


@pytest.mark.parametrize(
    ("name", "expected"),
    [("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)],
)
def test_explicit_dtype_names_map_to_torch_dtypes(name: str, expected: torch.dtype) -> None:
    """Each explicit name maps to its torch dtype, whatever the device."""
    assert pick_dtype(name, CPU) is expected
    assert pick_dtype(name, torch.device("cuda")) is expected


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cuda_follows_bf16_support(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    """'auto' on a CUDA device is bf16 exactly when the device supports it."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert pick_dtype("auto", torch.device("cuda")) is expected
