"""LoRA adapters switched off: the KL reference of a LoRA policy is the policy itself with
its adapters off (the base weights), not a second copy of the model. peft's LoRA layers are
recognised by their attributes, so nothing here imports peft."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class AdaptersOff:
    """The KL reference of a LoRA policy: `policy` (a `LogProbModel`) called with its
    adapters switched off. `completion_logprobs` calls it through the policy's own forward,
    so FSDP2's root hooks run."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy


def adapter_layers(model: Any) -> list[Any]:
    """peft's injected LoRA layers of `model` (`BaseTunerLayer`s, told by their `lora_A`
    adapters and their `_disable_adapters` switch)."""
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "_disable_adapters")]


@contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """Inside the block every LoRA layer of `model` computes its base layer only. This sets
    peft's own switch; peft's `enable_adapters(False)` would also flip `requires_grad` on the
    adapter weights and back, which an optimiser over sharded parameters must not see."""
    layers = adapter_layers(model)
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer in layers:
            layer._disable_adapters = False
