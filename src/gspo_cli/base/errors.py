"""Errors a user can act on. Each message says what is wrong, why, and what to do.

Only `cli` turns these into exit codes: `UserError` (bad recipe, bad path, bad
option) exits 2; any other `GspoError` (a runtime failure) exits 1, except the stops that
carry their own code: `WatchdogStop` (3) and `Interrupted` (130 or 143).
"""

from __future__ import annotations


class GspoError(Exception):
    """A failure with a message meant for the user (exit code 1)."""

    exit_code = 1


class UserError(GspoError):
    """The user's input is wrong: recipe, option or path (exit code 2)."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe failed validation; `problems` holds every problem found, one line each."""

    def __init__(self, problems: list[str], source: str = "recipe") -> None:
        self.problems = problems
        self.source = source
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"{source} has {len(problems)} problems:\n{lines}")


class ModelError(UserError):
    """A model or tokenizer cannot be loaded."""


class DataError(UserError):
    """A dataset cannot be loaded or is not usable."""


class RewardError(GspoError):
    """A reward function failed or returned something that is not a finite number."""


class CheckpointError(GspoError):
    """A checkpoint is missing, incomplete or does not match the run."""


class StorageError(GspoError):
    """A write failed because the disk is full or failed; nothing half-written is left.
    `failure` is the underlying error and `needed` the bytes the write needed, if known, so
    an enclosing write can say the same in its own words."""

    def __init__(
        self, message: str, failure: BaseException | None = None, needed: int | None = None
    ) -> None:
        super().__init__(message)
        self.failure = failure
        self.needed = needed


class TrainingError(GspoError):
    """Training cannot go on (e.g. non-finite losses step after step)."""


class WatchdogStop(TrainingError):
    """`train.strict`: a watchdog warning stopped the run after writing a checkpoint (exit 3)."""

    exit_code = 3


class Interrupted(GspoError):
    """Training stopped on a signal after writing a checkpoint (exit 130 or 143)."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.exit_code = 143 if signal_name == "SIGTERM" else 130
