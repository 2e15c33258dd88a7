"""A LoRA policy's checkpoint: the adapter alone, in PEFT's own format (adapter_config.json +
adapter_model.safetensors, loadable with `PeftModel.from_pretrained`), written and read with
safetensors and JSON only. peft is imported lazily, only for runs that have an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gspo_cli.base.errors import ModelError
from gspo_cli.rundir.paths import ADAPTER_CONFIG, ADAPTER_WEIGHTS

PEFT_PREFIX = "base_model.model."  # how PEFT's saved keys name the causal LM's modules


def has_adapter(model: Any) -> bool:
    """Whether LoRA adapters were injected into `model`."""
    return bool(getattr(model, "peft_config", None))


def adapter_state(model: Any, weights: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The adapter's tensors under PEFT's saved names (from `weights`, a full state dict of
    `model`, when given: what a sharded model gathers)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, state_dict=weights, save_embedding_layers=False)
    return {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_adapter(
    model: Any, directory: Path, weights: dict[str, torch.Tensor] | None = None
) -> None:
    """adapter_config.json + adapter_model.safetensors in `directory` (a staging directory),
    as `PeftModel.save_pretrained` writes them."""
    from safetensors.torch import save_file

    model.peft_config["default"].save_pretrained(str(directory))  # adapter_config.json
    save_file(adapter_state(model, weights), str(directory / ADAPTER_WEIGHTS), {"format": "pt"})


def load_adapter_weights(model: Any, directory: Path) -> None:
    """Put the adapter saved in `directory` into `model`'s injected adapter (same config)."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        saved = load_file(str(directory / ADAPTER_WEIGHTS))
    except Exception as exc:
        raise ModelError(f"cannot read the adapter in {directory}: {exc}") from None
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in saved.items()}
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as exc:  # a shape mismatch: another rank or model
        problem = str(exc).strip().splitlines()[-1].strip()[:160]
    else:
        wanted = {n for n, p in model.named_parameters() if p.requires_grad}
        bad = sorted(result.unexpected_keys) + sorted(wanted & set(result.missing_keys))
        problem = f"{'unexpected' if result.unexpected_keys else 'missing'} {bad[0]}" if bad else ""
    if problem:
        raise ModelError(
            f"the adapter in {directory} does not fit this model and model.lora ({problem}); "
            "use the recipe it was trained with"
        )


def is_adapter_dir(directory: Path) -> bool:
    """Whether `directory` holds a PEFT adapter (config and weights)."""
    return (directory / ADAPTER_CONFIG).is_file() and (directory / ADAPTER_WEIGHTS).is_file()
