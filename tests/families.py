"""Tiny models of the decoder families people RL-train, built from their transformers configs
(random weights) around a real BPE tokenizer: SmolLM2's, from ../shared/models.

Each family keeps its own quirks: Gemma 2's logit softcap, Granite's logit divisor and
embedding multiplier, sliding-window layers (window 8, shorter than the prompts, so the
window really cuts) in Gemma 2/3 and GPT-OSS, experts in Qwen2-MoE, Qwen3-MoE and GPT-OSS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# ../shared/models beside the checkout; tests that need it skip when it is absent.
SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
SMOLLM2_SHARED = SHARED_MODELS / "smollm2-135m-instruct"
QWEN3_TOKENIZER = SHARED_MODELS / "qwen3-tokenizer"
QWEN3_CONFIG = SHARED_MODELS / "qwen3-configs" / "qwen3-0.6b.json"

SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}
SLIDING = {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"] * 2}
EXPERTS = {"num_experts_per_tok": 2}

# model_type -> what differs from SHAPE
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},  # its default window (4096) is longer than any row here
    "qwen2": {},
    "qwen2_moe": {
        **EXPERTS,
        "num_experts": 4,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 64,
    },
    "qwen3": {},
    "qwen3_moe": {**EXPERTS, "num_experts": 4, "moe_intermediate_size": 32},
    "gemma2": SLIDING,  # also final_logit_softcapping 30 by default
    "gemma3_text": SLIDING,
    "phi3": {},
    "olmo2": {},
    "granite": {"logits_scaling": 4.0, "embedding_multiplier": 2.0},
    "smollm3": {},
    "gpt_oss": {
        **SLIDING,
        **EXPERTS,
        "num_local_experts": 4,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
}


def bpe_tokenizer() -> Any:
    """SmolLM2's BPE tokenizer with its ChatML template (49,152 tokens)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2_SHARED)


def build_family(model_type: str, tokenizer: Any, seed: int = 0, **changes: Any) -> Any:
    """A float32 model of `model_type` with random weights (seeded), sized for `tokenizer`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {**SHAPE, **FAMILIES[model_type], **changes}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **fields,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).float()


def save_family(model_type: str, tokenizer: Any, path: Path) -> Path:
    """`build_family` written as an ordinary Hugging Face directory with its tokenizer."""
    build_family(model_type, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def qwen3_shaped(layers: int = 1, **changes: Any) -> Any:
    """A float32 model of Qwen3-0.6B's published shape (hidden 1024, vocabulary 151,936) with
    `layers` layers and random weights (seeded)."""
    import json

    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads(QWEN3_CONFIG.read_text()) | {"num_hidden_layers": layers, **changes}
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).float().eval()
