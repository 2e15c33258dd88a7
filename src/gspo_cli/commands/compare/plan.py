"""Planning a comparison: one recipe per algorithm and seed, and where each run stands.

The runs differ only in `algo.mode`, its default clip range and advantage scale, and `seed`;
an explicit `--set` applies to all of them. A run directory is `new`, `finished` or
`unfinished`; an unfinished one without a checkpoint to resume from is cleared so it can
restart.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gspo_cli.base.errors import UserError
from gspo_cli.recipe import DEFAULT_CLIP, Recipe, apply_override, validate
from gspo_cli.rundir.metrics import read_metrics
from gspo_cli.rundir.paths import (
    EVAL_FILE,
    FINAL_DIR,
    METRICS_FILE,
    RECIPE_FILE,
    RUN_FILES,
    SAMPLES_FILE,
)

# The algo keys whose defaults follow algo.mode (recipe.sections: DEFAULT_CLIP and
# DEFAULT_ADVANTAGE_SCALE).
MODE_DEFAULTED = ("clip_low", "clip_high", "advantage_scale")


@dataclass(frozen=True)
class PlannedRun:
    algo: str
    seed: int
    recipe: Recipe
    run_dir: Path


def run_dir_name(algo: str, seed: int) -> str:
    return f"{algo}-seed{seed}"


def run_mapping(
    raw: dict[str, Any], algo: str, seed: int, overrides: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """The raw recipe mapping for one run, and notes on what was changed.

    A clip range or advantage scale written in the recipe file belongs to the file's own mode,
    so it is dropped for a run of another mode (which then takes that mode's default); one
    given with `--set` applies to every run. `--set algo.mode` and `--set seed` are replaced
    by the run's.
    """
    mapping = copy.deepcopy(raw)
    notes: list[str] = []
    section = mapping.get("algo")
    if isinstance(section, dict):
        file_mode = section.get("mode", "gspo")
        dropped = [k for k in MODE_DEFAULTED if k in section]
        if file_mode != algo and dropped:
            for key in dropped:
                del section[key]
            notes.append(
                f"{algo}: the recipe's algo.{'/'.join(dropped)} belong to its mode {file_mode} "
                f"and are not used; {algo} takes its own defaults (--set one to apply it to "
                "every run)"
            )
    for assignment in overrides:
        apply_override(mapping, assignment)
    apply_override(mapping, f"algo.mode={algo}")
    apply_override(mapping, f"seed={seed}")
    return mapping, notes


def plan_runs(
    raw: dict[str, Any],
    algos: Sequence[str],
    seeds: Sequence[int],
    overrides: Sequence[str],
    out: Path,
    source: str,
) -> tuple[list[PlannedRun], list[str]]:
    """One validated recipe per (algorithm, seed), algorithm-major, plus notes."""
    planned: list[PlannedRun] = []
    notes: list[str] = []
    for algo in dict.fromkeys(algos):
        if algo not in DEFAULT_CLIP:
            raise UserError(
                f"--algos: unknown algorithm {algo!r}; choose from {', '.join(DEFAULT_CLIP)}"
            )
        for seed in dict.fromkeys(seeds):
            mapping, run_notes = run_mapping(raw, algo, seed, overrides)
            notes += [n for n in run_notes if n not in notes]
            recipe = validate(mapping, f"{source} ({algo}, seed {seed})")
            planned.append(PlannedRun(algo, seed, recipe, out / run_dir_name(algo, seed)))
    return planned, notes


RunState = Literal["new", "finished", "unfinished"]


def run_state(run_dir: Path, steps: int) -> RunState:
    """`finished` when final/ exists and the metrics reach `steps`; `new` when nothing was
    written; otherwise `unfinished` (to resume or restart)."""
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file() and not (run_dir / RECIPE_FILE).is_file():
        return "new"
    if (run_dir / FINAL_DIR).is_dir() and metrics.is_file():
        try:
            rows = _train_rows_lenient(metrics)
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(
                f"{metrics} is unreadable ({exc}); move {run_dir} away or choose a new --out "
                "directory"
            ) from None
        last = max((r["step"] for r in rows), default=0)
        if last >= steps:
            return "finished"
    return "unfinished"


def _train_rows_lenient(path: Path) -> list[dict[str, Any]]:
    """The training rows of a metrics file, skipping lines that do not parse."""
    return [
        row
        for row in read_metrics(path)
        if isinstance(row.get("step"), int) and "reward_mean" in row
    ]


# Files a run directory may hold (a run's own, and what `gspo eval RUN_DIR` writes there); an
# unfinished run with nothing else is safe to clear.
_RUN_ENTRIES = {*RUN_FILES, EVAL_FILE, SAMPLES_FILE}


def clear_unfinished(run_dir: Path) -> None:
    """Delete an unfinished run that has no checkpoint to resume from, so it can restart.
    Refuses (UserError) when the directory holds anything a run does not write."""
    foreign = [
        p.name
        for p in run_dir.iterdir()
        if p.name not in _RUN_ENTRIES and not p.name.startswith(".")
    ]
    if foreign:
        raise UserError(
            f"{run_dir} holds files a run does not write ({', '.join(sorted(foreign))}); "
            "move them away or choose a new --out directory"
        )
    shutil.rmtree(run_dir)
