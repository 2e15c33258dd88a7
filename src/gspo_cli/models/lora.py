"""LoRA adapters through peft: injected in place into the causal LM, so the sampler, the
scorer and the optimiser all see the one live adapter; saved in PEFT's own format; merged
into an ordinary Hugging Face directory for `final/`.

`peft` is an optional extra (`pip install "gspo-cli[lora]"`); everything here imports it
lazily, and `require_peft` turns its absence into one line before any model loads.

The adapter is injected with `get_peft_model` and the `PeftModel` wrapper is dropped: the
causal LM itself keeps its class, its decoder (`base_model`) and its output head, which the
fast scoring paths (`scoring.completions`) use directly. The head is never adapted (the
chunked head reads `lm_head.weight` itself), nor is a mixture-of-experts router (`mlp.gate`):
routing replay re-weights the experts π_old chose from the live router logits, and an adapter
there would only add a path by which training moves expert choices; the experts and attention
carry the task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gspo_cli.base.constants import ROUTER_NAMES
from gspo_cli.base.errors import UserError
from gspo_cli.recipe import LoraSection

INSTALL = 'pip install "gspo-cli[lora]"'


def require_peft() -> None:
    """Raise one line naming the install command when peft cannot be imported."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise UserError(
            f"model.lora needs the peft library, which is not installed; run {INSTALL}, or "
            "remove model.lora to fine-tune every weight"
        ) from None


def default_targets(model: Any) -> list[str]:
    """Leaf names of every bias-or-not `nn.Linear` inside the decoder layers: attention and
    MLP projections, without the output head (outside the layers) or MoE routers."""
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.base_model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    return sorted(names - set(ROUTER_NAMES))


def attach(model: Any, section: LoraSection, base: str) -> None:
    """Inject LoRA adapters into `model` in place (B = 0, so the model is unchanged) and
    freeze every other weight; `base` (the recipe's model.name) is what the saved adapter's
    config names as its base model."""
    require_peft()
    from peft import LoraConfig, get_peft_model

    targets = list(section.target_modules or default_targets(model))
    config = LoraConfig(
        r=section.rank,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        get_peft_model(model, config)  # injects into `model`; the wrapper is not kept
    except ValueError as exc:  # no module matched the names
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(
            f"model.lora.target_modules {targets}: {first}; name modules of this model (e.g. "
            "q_proj, v_proj) or leave it unset for every attention and MLP projection"
        ) from None
    model.peft_config["default"].base_model_name_or_path = base
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)


def merged_from_saved(base: Any, directory: Path) -> Any:
    """`base` (a freshly loaded base model) with the adapter saved in `directory` loaded by
    `PeftModel.from_pretrained` and folded into its weights (`merge_and_unload`): an ordinary
    model of the base class, for `final/`."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(directory)).merge_and_unload()


def write_merged(name: str, dtype: str, adapter_dir: Path, target: Path) -> None:
    """Base model `name` (on the CPU) with the adapter in `adapter_dir` merged into it, saved
    with its tokenizer as an ordinary Hugging Face directory at `target` (a staging dir)."""
    from gspo_cli.models.loading import load_policy

    base, tokenizer = load_policy(name, dtype, torch.device("cpu"), lambda _: None)
    merged_from_saved(base, adapter_dir).save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
