"""Weights, gradients and AdamW state of full fine-tuning against LoRA, computed from model
shapes (meta device, no memory) by `gspo check`'s own estimate (`commands.resources`):
SmolLM2-135M-Instruct, Qwen3-0.6B and Qwen3-8B.

    python bench/lora_memory.py            # LoRA rank 16 (the default), bfloat16 weights
    python bench/lora_memory.py --dtype-bytes 4 --rank 8

Qwen3-8B's shape is its published one (hidden 4096, 36 layers, MLP 12288, 32 heads / 8 KV
heads of 128, vocabulary 151,936, untied embeddings). LoRA's adapter is counted in float32
(peft keeps it so), its gradients and AdamW moments too; the frozen base model has neither.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "models"

QWEN3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 36,
    "intermediate_size": 12288,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151_936,
    "tie_word_embeddings": False,
    "max_position_embeddings": 40_960,
}


def configs() -> dict[str, Any]:
    from transformers import AutoConfig

    qwen = json.loads((SHARED / "qwen3-configs" / "qwen3-0.6b.json").read_text())
    return {
        "SmolLM2-135M": AutoConfig.from_pretrained(SHARED / "smollm2-135m-instruct"),
        "Qwen3-0.6B": AutoConfig.for_model(qwen.pop("model_type"), **qwen),
        "Qwen3-8B": AutoConfig.for_model("qwen3", **QWEN3_8B),
    }


def main() -> None:
    from gspo_cli.commands.resources import estimate, gib, model_shape
    from gspo_cli.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dtype-bytes", type=int, default=2, help="2: bf16 weights, 4: fp32")
    args = parser.parse_args()
    full_recipe = load_recipe(None)
    lora_recipe = load_recipe(None, [f"model.lora.rank={args.rank}"])
    print(f"weights {8 * args.dtype_bytes}-bit; LoRA rank {args.rank} on every projection")
    print("| model | params | LoRA params | | weights | gradients | AdamW state | sum |")
    print("|---|---|---|---|---|---|---|---|")
    for name, config in configs().items():
        shape = model_shape(config)
        adapter = shape.adapter_params(args.rank, None)
        for label, recipe in (("full", full_recipe), ("LoRA", lora_recipe)):
            fixed = estimate(recipe, shape, args.dtype_bytes).fixed
            parts = [fixed["weights"], fixed["gradients"], fixed["optimiser (AdamW)"]]
            print(
                f"| {name} | {shape.params / 1e6:,.1f} M | {adapter / 1e6:,.2f} M "
                f"({adapter / shape.params:.2%}) | {label} | "
                + " | ".join(gib(p) for p in [*parts, sum(parts)])
                + " |"
            )


if __name__ == "__main__":
    main()
