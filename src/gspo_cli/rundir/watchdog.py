"""The training watchdog: warnings for runs that silently learn nothing.

Fed each training step's metrics row, `Watchdog.observe` returns the warnings that start
at that step. From `FIRST_CHECK_STEP` rows on, each condition is judged on the last
`WINDOW` rows (fewer while the run is younger). A warning is given once, when its
condition starts to hold, and again only after the condition has cleared and come back.

- `constant_reward`: `reward_std` is 0 on every step, one reward for every completion
  (the reward returns a constant; the task is far too hard, all 0, or too easy, all 1).
- `zero_signal`: mean `zero_std_frac` >= `ZERO_STD_FRAC`, almost every group's advantages
  are 0 (the task is too hard or too easy for the model; the reward is too coarse).
- `truncation`: mean `truncated_frac` >= `TRUNCATED_FRAC`, completions hit the new-token
  limit (`rollout.max_new_tokens` too small for an answer).
- `on_policy` (GSPO and GSPO-token): `clip_frac_offpolicy_max` is 0 on every step, the policy barely
  moves between minibatches (learning rate tiny, or the clip range GRPO-sized).

A more specific condition hides the ones it implies: a constant reward makes every group's
advantages 0 (`zero_signal`), and with (almost) no advantages nothing can be clipped
(`on_policy`). Pure: no torch, no I/O; replaying a run's rows rebuilds the same state.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from gspo_cli.base.constants import SEQUENCE_MODES

FIRST_CHECK_STEP = 3  # rows seen before the first check
WINDOW = 5  # rows each condition is judged on
ZERO_STD_FRAC = 0.95  # mean fraction of groups with all-equal rewards
TRUNCATED_FRAC = 0.9  # mean fraction of completions cut at max_new_tokens

CODES = ("constant_reward", "zero_signal", "truncation", "on_policy")
# A condition that holds hides the ones listed after it (they follow from it).
IMPLIES: dict[str, tuple[str, ...]] = {
    "constant_reward": ("zero_signal", "on_policy"),
    "zero_signal": ("on_policy",),
}


@dataclass(frozen=True)
class RunWarning:
    code: str  # one of CODES
    value: float  # the measured figure the condition was judged on
    message: str  # what was measured, the likely cause, and the recipe key to change

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def _number(row: dict[str, Any], key: str) -> float:
    """`row[key]` as a float; missing or null (a non-finite value on disk) is NaN."""
    value = row.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _check(
    code: str, rows: list[dict[str, Any]], mode: str, max_new_tokens: int
) -> RunWarning | None:
    """The warning `code` if its condition holds over `rows` (the window), else None."""
    n = len(rows)
    if code == "constant_reward":
        stds = [_number(r, "reward_std") for r in rows]
        if all(s == 0 for s in stds):
            reward = _number(rows[-1], "reward_mean")
            return RunWarning(
                code,
                reward,
                f"every completion of the last {n} steps got the same reward ({reward:g}), so "
                "every advantage is 0 and nothing is learned. Likely causes: the reward "
                "function returns a constant (check `reward`), or the task is far too hard "
                "(all 0) or too easy (all 1) for the model; read completions.jsonl, then fix "
                "`reward` or pick data that fits the model",
            )
    elif code == "zero_signal":
        frac = _mean([_number(r, "zero_std_frac") for r in rows])
        if frac >= ZERO_STD_FRAC:
            return RunWarning(
                code,
                frac,
                f"zero_std_frac {frac:.2f} over the last {n} steps: in almost every group all "
                "completions got the same reward, so their advantages are 0 and the run "
                "learns (almost) nothing. Likely causes: the task is too hard or too easy for "
                "the model, or the reward is too coarse; try easier or harder data, a graded "
                "reward (a list of `reward` terms), or a larger `rollout.group_size`",
            )
    elif code == "truncation":
        frac = _mean([_number(r, "truncated_frac") for r in rows])
        if frac >= TRUNCATED_FRAC:
            return RunWarning(
                code,
                frac,
                f"truncated_frac {frac:.2f} over the last {n} steps: most completions hit the "
                f"limit of {max_new_tokens} new tokens before ending, so they can rarely "
                f"contain a whole answer; raise `rollout.max_new_tokens` (now {max_new_tokens})",
            )
    elif code == "on_policy" and mode in SEQUENCE_MODES:
        clips = [_number(r, "clip_frac_offpolicy_max") for r in rows]
        if all(c == 0 for c in clips):  # NaN (one optimiser step per rollout) never holds
            return RunWarning(
                code,
                0.0,
                f"clip fraction exactly 0 on minibatches 2..N for the last {n} steps: the "
                f"policy barely moves between minibatches, so the {mode} run is effectively "
                "on-policy and its clipping does nothing. Check `optim.lr` (too small?), "
                "`algo.clip_low`/`algo.clip_high` (GRPO-sized?) and `algo.minibatches`",
            )
    return None


class Watchdog:
    """Warnings from a stream of training rows; one instance per run."""

    def __init__(self, mode: str, max_new_tokens: int) -> None:
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.rows: deque[dict[str, Any]] = deque(maxlen=WINDOW)
        self.seen = 0
        self.active: set[str] = set()  # codes whose condition held at the last check

    def observe(self, row: dict[str, Any]) -> list[RunWarning]:
        """The warnings that start with this training row (empty before FIRST_CHECK_STEP,
        and for conditions already warned about that have not cleared since)."""
        self.rows.append(row)
        self.seen += 1
        if self.seen < FIRST_CHECK_STEP:
            return []
        window = list(self.rows)
        found = {c: w for c in CODES if (w := _check(c, window, self.mode, self.max_new_tokens))}
        hidden = {h for c in found for h in IMPLIES.get(c, ())}
        holding = [found[c] for c in CODES if c in found and c not in hidden]
        new = [w for w in holding if w.code not in self.active]
        self.active = {w.code for w in holding}
        return new
