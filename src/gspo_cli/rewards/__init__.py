"""Reward functions, registered by name.

Every reward is a pure function `fn(completion: str, reference: str) -> float`;
`get(name)` returns it, and `score` applies one to a batch and refuses anything that
is not a finite number, naming the reward and the input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gspo_cli.errors import RewardError, UserError

RewardFn = Callable[[str, str], float]


def exact(completion: str, reference: str) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, equals the reference.

    >>> exact(" 57", "57"), exact("57 apples", "57")
    (1.0, 0.0)
    """
    return 1.0 if completion.strip() == reference.strip() else 0.0


REGISTRY: dict[str, RewardFn] = {"exact": exact}


def get(name: str) -> RewardFn:
    """The registered reward called `name`."""
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UserError(f"unknown reward {name!r}: known rewards are {known}") from None


def score(fn: RewardFn, name: str, completions: list[str], references: list[str]) -> list[float]:
    """Rewards for a batch; a reward that raises or returns a non-finite value stops the run."""
    rewards: list[float] = []
    for completion, reference in zip(completions, references, strict=True):
        try:
            value = fn(completion, reference)
        except Exception as exc:
            raise RewardError(
                f"reward {name!r} raised {type(exc).__name__}: {exc} "
                f"on completion={completion!r}, reference={reference!r}"
            ) from exc
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise RewardError(
                f"reward {name!r} returned {value!r}, not a finite number, "
                f"on completion={completion!r}, reference={reference!r}"
            )
        rewards.append(float(value))
    return rewards
