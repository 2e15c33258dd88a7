"""The memory estimate and the context fit, with hand-computed numbers for the tiny Qwen3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gspo_cli.base.errors import DataError, UserError
from gspo_cli.commands import resources
from gspo_cli.commands.prepare import ContextFit, fit_context
from gspo_cli.commands.resources import ModelShape, estimate, model_shape
from gspo_cli.models.tiny import TINY_MODEL_NAME, tiny_config
from gspo_cli.recipe import load_recipe, read_yaml, validate

from families import QWEN3_CONFIG, SMOLLM2_SHARED

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# tiny-qwen3: vocab 52 (3 specials + 49 characters), hidden 128, 4 layers, 4 heads of 32
# (2 KV heads), intermediate 384, tied embeddings. Per layer: q 128·128 + k 128·64 + v 128·64
# + o 128·128 = 49,152; q/k norms 32 + 32; MLP 3 · 128·384 = 147,456; two norms 2 · 128:
# 196,928. Four layers 787,712 + embedding 52·128 = 6,656 + final norm 128 = 794,496.
# LoRA: in + out features per projection, times 4 layers: q 128+128, k 128+64, v 128+64,
# o 128+128, gate/up 128+384, down 384+128.
TINY_LINEARS = {
    "q_proj": 4 * 256,
    "k_proj": 4 * 192,
    "v_proj": 4 * 192,
    "o_proj": 4 * 256,
    "gate_proj": 4 * 512,
    "up_proj": 4 * 512,
    "down_proj": 4 * 512,
}
TINY = ModelShape(
    params=794_496,
    layers=4,
    hidden=128,
    kv_heads=2,
    head_dim=32,
    vocab=52,
    context=256,
    linears=TINY_LINEARS,
)


@pytest.fixture(scope="module")
def tiny_shape() -> ModelShape:
    return model_shape(tiny_config(TINY_MODEL_NAME))


def test_tiny_shape_is_counted_from_its_config(tiny_shape: ModelShape) -> None:
    """The meta-device count equals the hand count, and the config's sizes are read."""
    assert tiny_shape == TINY, tiny_shape


def test_default_recipe_parts_in_float32() -> None:
    """Every part of the default recipe on the tiny model, worked out by hand."""
    got = estimate(load_recipe(None), TINY, dtype_bytes=4, prompt=248)
    weights = 794_496 * 4  # 3,177,984
    assert got.fixed == {
        "weights": weights,
        "gradients": weights,
        "optimiser (AdamW)": 2 * weights,
    }
    # 16 prompts × 8 rows × (248 + 8) tokens × (4 layers · 2 · 2 heads · 32 · 4 bytes = 2,048)
    assert got.sampling == {"KV cache (sampling)": 128 * 256 * 2048}  # 64 MiB
    # a minibatch holds 32 rows of 256 tokens: 8,192 tokens (= the budget) per micro-batch
    assert got.training == {
        "log-prob chunk": 2 * 1024 * 52 * 4,  # 425,984
        "activations": 8192 * 128 * 4 * 24 * 4,  # 402,653,184
    }
    assert got.total == 4 * weights + 425_984 + 402_653_184 == 415_791_104
    assert got.biggest == ("activations", 402_653_184)


def test_fsdp_shares_weights_and_rows_over_processes() -> None:
    """Two processes: half the weights, gradients and optimiser each, half the rows; the
    other half of the weights comes back while sampling."""
    got = estimate(load_recipe(None), TINY, dtype_bytes=4, world_size=2, prompt=248)
    half = 794_496 * 4 // 2  # 1,588,992
    assert got.fixed["weights"] == got.fixed["gradients"] == half
    assert got.fixed["optimiser (AdamW)"] == 2 * half
    assert got.sampling == {
        "KV cache (sampling)": 64 * 256 * 2048,
        "gathered weights (sampling)": half,
    }


def test_kl_adds_a_reference_copy() -> None:
    """algo.kl_beta > 0 keeps a frozen copy of the weights."""
    recipe = load_recipe(None, ["algo.kl_beta=0.01"])
    got = estimate(recipe, TINY, dtype_bytes=2, prompt=248)
    assert got.fixed["reference model"] == 794_496 * 2


def test_unsplit_forward_and_unchunked_logprobs() -> None:
    """microbatch_tokens 0 and logprob_chunk_tokens 0: a whole minibatch at once."""
    recipe = load_recipe(None, ["train.microbatch_tokens=0", "train.logprob_chunk_tokens=0"])
    got = estimate(recipe, TINY, dtype_bytes=4, prompt=92)  # rows of 100 tokens
    assert got.training["log-prob chunk"] == 2 * 3200 * 52 * 4  # 32 rows × 100 tokens
    assert got.training["activations"] == 3200 * 128 * 4 * 24 * 4


def test_refusal_names_figures_and_the_setting() -> None:
    """Over the free memory: one line with the total, what is free, the largest part and
    the setting that shrinks it."""
    recipe = load_recipe(None, ["rollout.group_size=1024", "rollout.prompts_per_step=256"])
    got = estimate(recipe, TINY, dtype_bytes=4, prompt=248, available=8 * resources.GIB)
    assert got.sampling["KV cache (sampling)"] == 262_144 * 256 * 2048  # 128 GiB
    with pytest.raises(UserError) as caught:
        resources.require_memory(got)
    message = str(caught.value)
    assert "\n" not in message
    assert "8.00 GiB is free" in message and "KV cache (sampling) (128.00 GiB" in message
    assert "rollout.group_size" in message, message


def test_context_fit_drops_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    """Prompts over context - max_new_tokens are dropped, in one announced line."""
    rows: dict[Any, list[dict[str, Any]]] = {
        "train": [{"prompt_tokens": n} for n in (5, 10, 11, 30)],
        "test": [{"prompt_tokens": 3}],
    }
    kept = fit_context(rows, ContextFit(context=16, new_tokens=6), print)
    assert [r["prompt_tokens"] for r in kept["train"]] == [5, 10]
    said = capsys.readouterr().out.strip().splitlines()
    assert said == [
        "dropped 2 of 4 train prompts longer than 10 tokens (model context 16 - "
        "rollout.max_new_tokens 6); lower rollout.max_new_tokens to keep them"
    ]
    with pytest.raises(DataError, match="all 4 train prompts are longer than 2 tokens"):
        fit_context(rows, ContextFit(context=8, new_tokens=6), print)


def _shape_of(name: str) -> ModelShape:
    """A recipe model's shape from the configs kept beside the checkout (no hub)."""
    from transformers import AutoConfig

    if name.startswith("tiny-"):
        return model_shape(tiny_config(name))
    if name == "Qwen/Qwen3-0.6B":
        fields = json.loads(QWEN3_CONFIG.read_text())
        return model_shape(AutoConfig.for_model(fields.pop("model_type"), **fields))
    assert name == "HuggingFaceTB/SmolLM2-135M-Instruct", name
    return model_shape(AutoConfig.from_pretrained(SMOLLM2_SHARED))


@pytest.mark.parametrize("path", sorted(RECIPES.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_fits_24_gb(path: Path) -> None:
    """No recipe is refused on a 24 GB GPU (bfloat16, as `auto` picks there)."""
    if not QWEN3_CONFIG.is_file() or not SMOLLM2_SHARED.is_dir():
        pytest.skip("../shared/models is not beside the checkout")
    recipe = validate(read_yaml(path))
    shape = _shape_of(recipe.model.name)
    prompt = resources.prompt_tokens(recipe, shape.context)
    got = estimate(recipe, shape, dtype_bytes=2, prompt=prompt, available=24 * 10**9)
    assert got.fits, f"{path.name}: {got.summary()}"


def test_lora_estimate_trains_the_adapter_only(tiny_shape: ModelShape) -> None:
    """With model.lora the gradients and AdamW states are the adapter's (float32), the
    weights add it, and a KL reference costs nothing (the adapter switched off). Rank 8 on
    the tiny model: 8 × (1024 + 768 + 768 + 1024 + 3 · 2048) = 8 × 9,728 = 77,824 params."""
    assert tiny_shape.adapter_params(8, None) == 77_824
    assert tiny_shape.adapter_params(8, ("q_proj", "v_proj")) == 8 * (1024 + 768)
    recipe = load_recipe(None, ["model.lora.rank=8", "algo.kl_beta=0.1"])
    full = estimate(load_recipe(None, ["algo.kl_beta=0.1"]), tiny_shape, 4)
    lora = estimate(recipe, tiny_shape, 4)
    adapter = 77_824 * 4
    assert lora.fixed == {
        "weights": 794_496 * 4 + adapter,
        "gradients": adapter,
        "optimiser (AdamW)": 2 * adapter,
    }
    assert full.fixed["reference model"] == 794_496 * 4


def test_lora_adapter_of_qwen3_0_6b_by_hand() -> None:
    """Qwen3-0.6B (hidden 1024, 28 layers, 16 heads × 128, 8 KV heads, MLP 3072): per layer
    q 1024+2048, k 1024+1024, v 1024+1024, o 2048+1024, gate/up 1024+3072, down 3072+1024 =
    22,528; rank 16 × 28 layers: 10,092,544 adapter parameters."""
    if not QWEN3_CONFIG.is_file():
        pytest.skip("needs ../shared/models")
    shape = _shape_of("Qwen/Qwen3-0.6B")
    assert shape.adapter_params(16, None) == 16 * 28 * 22_528 == 10_092_544
