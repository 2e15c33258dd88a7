"""LoRA through peft: the recipe section, the adapter injected in place (the sampler and the
scorer both use the live adapter), the KL reference as the adapter switched off, PEFT's saved
format, and the one-line refusal when peft is missing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from gspo_cli.base.errors import RecipeError, UserError
from gspo_cli.models import lora
from gspo_cli.models.tiny import build_model, build_tokenizer
from gspo_cli.recipe import LoraSection, OptimSection, validate
from gspo_cli.rollout.sampling import generate
from gspo_cli.rundir import adapter
from gspo_cli.scoring.adapters import AdaptersOff, adapters_disabled
from gspo_cli.scoring.completions import LogProbModel, completion_logprobs

from families import SMOLLM2_SHARED, bpe_tokenizer, build_family

pytest.importorskip("peft")


def test_recipe_lora_defaults_and_lr() -> None:
    """model.lora is off by default; on, its defaults are r16/α32/no dropout and an lr 10× the
    full fine-tune's default (3e-4 vs 3e-5)."""
    assert validate({}).model.lora is None
    section = validate({"model": {"lora": {}}}).model.lora
    assert section == LoraSection(rank=16, alpha=32.0, dropout=0.0, target_modules=None)
    assert section is not None and section.lr == pytest.approx(10 * OptimSection().lr)


def test_recipe_refuses_a_bad_rank() -> None:
    """A rank of 0 is refused at load time with the field's name."""
    with pytest.raises(RecipeError, match=r"model\.lora\.rank"):
        validate({"model": {"lora": {"rank": 0}}})


def test_missing_peft_is_one_line_naming_the_install() -> None:
    """With peft hidden, `require_peft` raises a UserError with the pip command."""
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "from gspo_cli.models import lora\n"
        "try:\n    lora.require_peft()\nexcept Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("UserError model.lora needs the peft library"), out.stdout
    assert 'pip install "gspo-cli[lora]"' in out.stdout


def _tiny() -> tuple[Any, Any]:
    tok = build_tokenizer()
    return build_model(len(tok), tok.pad_token_id, tok.eos_token_id, seed=0), tok


def test_default_targets_are_attention_and_mlp_projections() -> None:
    """Every projection of the tiny Qwen3; the MoE family's router `gate` is left out."""
    model, _ = _tiny()
    expected = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora.default_targets(model) == expected
    if not SMOLLM2_SHARED.is_dir():
        pytest.skip("needs ../shared/models")
    moe = build_family("qwen2_moe", bpe_tokenizer())
    targets = lora.default_targets(moe)
    assert "gate" not in targets and "q_proj" in targets, targets


def test_attach_trains_only_the_adapter_and_starts_unchanged() -> None:
    """After attach only lora_ weights require grad, and (B = 0) the logits are unchanged."""
    model, _ = _tiny()
    ids = torch.tensor([[3, 4, 5, 6]])
    before = model(ids).logits
    lora.attach(model, LoraSection(rank=4), "tiny-qwen3")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # 4 layers × 7 projections × (A, B)
    assert len(trainable) == 4 * 7 * 2
    assert torch.equal(model(ids).logits, before)


def _update_adapter(policy: LogProbModel, gen: Any, lr: float = 0.05) -> None:
    """One AdamW step on the adapter that raises the sampled tokens' log-probs."""
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    t = gen.completion_mask.shape[1]
    lp = completion_logprobs(policy, gen.input_ids, gen.attention_mask, t)  # [N, T]
    (-(lp * gen.completion_mask).sum()).backward()
    optimizer.step()


def _sampler_matches_trainer(model: Any, tokenizer: Any, prompts: list[str]) -> None:
    lora.attach(model, LoraSection(rank=4), "test")
    policy = LogProbModel(model)
    seeds = list(range(len(prompts)))
    first = generate(model, tokenizer, prompts, max_new_tokens=6, seeds=seeds)
    _update_adapter(policy, first)
    with torch.no_grad():
        gen = generate(model, tokenizer, prompts, max_new_tokens=6, seeds=seeds)
        t = gen.completion_mask.shape[1]
        trainer = completion_logprobs(policy, gen.input_ids, gen.attention_mask, t)  # [N, T]
        with adapters_disabled(model):
            base = completion_logprobs(model, gen.input_ids, gen.attention_mask, t)
    assert gen.logprobs is not None, "the sampling pass should report its log-probs"
    real = gen.completion_mask.bool()
    gap = (gen.logprobs - trainer)[real].abs().max()
    assert gap < 1e-5, f"sampler and trainer log-probs differ by {gap}"
    moved = (base - trainer)[real].abs().max()
    assert moved > 1e-3, f"the update did not move the adapter's log-probs ({moved})"


def test_sampler_uses_the_live_adapter_tiny() -> None:
    """After an adapter update, the sampler's log-probs of its completions equal the
    trainer's (1e-5) and differ from the base model's: no stale copy anywhere."""
    model, tokenizer = _tiny()
    _sampler_matches_trainer(model, tokenizer, ["12+34=", "56+7=", "90+11=", "23+45="])


def test_sampler_uses_the_live_adapter_llama() -> None:
    """The same on a Llama-family model with SmolLM2's BPE tokenizer."""
    if not SMOLLM2_SHARED.is_dir():
        pytest.skip("needs ../shared/models")
    tokenizer = bpe_tokenizer()
    tokenizer.padding_side = "left"
    model = build_family("llama", tokenizer)
    _sampler_matches_trainer(model, tokenizer, ["What is 2+3?", "Hello there", "Count: 1 2"])


def test_reference_is_the_base_model() -> None:
    """`AdaptersOff(policy)` gives the base model's log-probs after an adapter update (a
    fresh copy of the base as the check), while the policy's have moved."""
    model, tokenizer = _tiny()
    base_copy, _ = _tiny()
    lora.attach(model, LoraSection(rank=4), "test")
    policy = LogProbModel(model)
    gen = generate(model, tokenizer, ["12+34=", "5+6="], max_new_tokens=5, seeds=[1, 2])
    _update_adapter(policy, gen)
    t = gen.completion_mask.shape[1]
    with torch.no_grad():
        ref = completion_logprobs(AdaptersOff(policy), gen.input_ids, gen.attention_mask, t)
        want = completion_logprobs(base_copy, gen.input_ids, gen.attention_mask, t)
        live = completion_logprobs(policy, gen.input_ids, gen.attention_mask, t)
    real = gen.completion_mask.bool()
    assert (ref - want)[real].abs().max() < 1e-6
    assert (live - want)[real].abs().max() > 1e-3
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)


def test_saved_adapter_loads_in_peft_and_merges(tmp_path: Path) -> None:
    """The checkpoint's adapter files load with `PeftModel.from_pretrained`, with our own
    loader, and merged into the base: all three give the trained model's logits."""
    from peft import PeftModel

    model, tokenizer = _tiny()
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)
    lora.attach(model, LoraSection(rank=4), str(base_dir))
    policy = LogProbModel(model)
    gen = generate(model, tokenizer, ["12+34=", "5+6="], max_new_tokens=5, seeds=[1, 2])
    _update_adapter(policy, gen)
    adapter.save_adapter(model, tmp_path)
    assert adapter.is_adapter_dir(tmp_path)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        want = model(ids).logits
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path)
        )
        assert torch.allclose(peft_model(ids).logits, want, atol=1e-6)
        ours = AutoModelForCausalLM.from_pretrained(base_dir)
        lora.attach(ours, LoraSection(rank=4), str(base_dir))
        adapter.load_adapter_weights(ours, tmp_path)
        assert torch.equal(ours(ids).logits, want)
        merged = lora.merged_from_saved(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path)
        assert type(merged).__name__ == "Qwen3ForCausalLM"
        assert torch.allclose(merged(ids).logits, want, atol=1e-5)


def test_adapter_of_another_rank_is_refused(tmp_path: Path) -> None:
    """Loading an adapter saved with rank 4 into a rank-8 injection is one ModelError line."""
    model, _ = _tiny()
    lora.attach(model, LoraSection(rank=4), "x")
    adapter.save_adapter(model, tmp_path)
    other, _ = _tiny()
    lora.attach(other, LoraSection(rank=8), "x")
    with pytest.raises(UserError, match="does not fit"):
        adapter.load_adapter_weights(other, tmp_path)


def test_unknown_target_module_is_refused() -> None:
    """target_modules naming nothing in the model is one UserError naming the setting."""
    model, _ = _tiny()
    with pytest.raises(UserError, match=r"model\.lora\.target_modules"):
        lora.attach(model, LoraSection(target_modules=("c_attn",)), "x")
