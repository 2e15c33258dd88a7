"""Reading finished runs through the documented `metrics.jsonl` schema.

Train rows: `step`, `reward_mean`, `clip_frac`, `ratio_mean`, `step_s`, `tokens_per_s` (and
`router_drift` for a mixture-of-experts run); eval rows: `step`, `eval_accuracy`. The run's
`recipe.yaml` gives the algorithm, clip range, seed and planned steps. A missing, unfinished
or corrupt run is a `RunProblem` whose message says which and why; `load_runs` turns each into
a one-line note and still reads the others.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gspo_cli.rundir.paths import METRICS_FILE, RECIPE_FILE

TRAIN_KEYS = ("reward_mean", "clip_frac", "ratio_mean", "step_s", "tokens_per_s")
ROUTER_KEY = "router_drift"  # mixture-of-experts runs only: compared when every row has it


@dataclass(frozen=True)
class RunData:
    """One finished run as read from its directory; series are in step order."""

    path: Path
    algo: str
    seed: int
    clip: tuple[float, float]
    steps: int  # train.steps of its recipe
    train_steps: tuple[int, ...]
    series: dict[str, tuple[float, ...]]  # TRAIN_KEYS -> one value per train step (nan: null)
    eval_steps: tuple[int, ...]
    eval_accuracy: tuple[float, ...]
    advantage: str = "-"  # algo.advantage_scale of its recipe ("-" when the recipe has none)

    @property
    def wall(self) -> tuple[float, ...]:
        """Cumulative training seconds (sum of step_s) at each train step."""
        total, out = 0.0, []
        for s in self.series["step_s"]:
            total += s if math.isfinite(s) else 0.0
            out.append(total)
        return tuple(out)

    @property
    def eval_wall(self) -> tuple[float, ...]:
        """Cumulative training seconds when each evaluation ran (0 before training)."""
        walls = dict(zip(self.train_steps, self.wall, strict=True))
        out, last = [], 0.0
        for step in self.eval_steps:
            last = max([w for s, w in walls.items() if s <= step], default=0.0)
            out.append(last)
        return tuple(out)


class RunProblem(Exception):
    """A run that cannot be compared; the message says which and why."""


def _number(value: Any, where: str) -> float:
    if value is None:
        return math.nan  # the writer stores non-finite numbers as null
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RunProblem(f"{where} is {value!r}, not a number")
    return float(value)


def _read_recipe(run_dir: Path) -> tuple[str, int, tuple[float, float], int, str]:
    """(mode, seed, (clip_low, clip_high), train.steps, advantage scale) from a run's
    recipe.yaml; the advantage scale is "-" when the recipe does not say."""
    path = run_dir / RECIPE_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        algo, train = data["algo"], data["train"]
        mode, seed, steps = algo["mode"], data["seed"], train["steps"]
        clip = (float(algo["clip_low"]), float(algo["clip_high"]))
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise RunProblem(
            f"{path} is not a resolved recipe (needs seed, algo.mode, algo.clip_low/high, "
            "train.steps)"
        ) from None
    if not (isinstance(mode, str) and isinstance(seed, int) and isinstance(steps, int)):
        raise RunProblem(f"{path}: seed, algo.mode or train.steps has the wrong type")
    return mode, seed, clip, steps, str(algo.get("advantage_scale", "-"))


def _read_rows(path: Path) -> tuple[dict[int, dict[str, float]], dict[int, float]]:
    """Train rows and eval accuracies by step; any malformed line makes the run corrupt."""
    train: dict[int, dict[str, float]] = {}
    evals: dict[int, float] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise RunProblem(f"{where} is not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise RunProblem(f"{where} has no integer step")
        step = row["step"]
        if "eval_accuracy" in row:
            evals[step] = _number(row["eval_accuracy"], f"{where}: eval_accuracy")
        elif "reward_mean" in row:
            missing = [k for k in TRAIN_KEYS if k not in row]
            if missing:
                raise RunProblem(f"{where}: train row without {', '.join(missing)}")
            train[step] = {k: _number(row[k], f"{where}: {k}") for k in TRAIN_KEYS}
            if ROUTER_KEY in row:
                train[step][ROUTER_KEY] = _number(row[ROUTER_KEY], f"{where}: {ROUTER_KEY}")
        else:
            raise RunProblem(f"{where} is neither a train row nor an eval row")
    return train, evals


def load_run(run_dir: Path, unfinished_ok: bool = False) -> RunData:
    """Read one finished run (with `unfinished_ok`, one still going: its steps so far), or raise
    RunProblem saying why it cannot be compared."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunProblem(f"{run_dir}: a file, not a run directory")
    if not run_dir.is_dir():
        raise RunProblem(f"{run_dir}: missing (no such directory)")
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise RunProblem(f"{run_dir}: missing {METRICS_FILE} (the run never started)")
    if not (run_dir / RECIPE_FILE).is_file():
        raise RunProblem(f"{run_dir}: missing {RECIPE_FILE}, so its algorithm is unknown")
    mode, seed, clip, steps, advantage = _read_recipe(run_dir)
    try:
        train, evals = _read_rows(metrics)
    except RunProblem as exc:
        raise RunProblem(f"corrupt: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunProblem(f"{metrics}: unreadable ({exc})") from None
    if not train or not evals:
        raise RunProblem(f"{metrics}: no {'train' if not train else 'eval'} rows")
    done = max(train)
    if done < steps and not unfinished_ok:
        raise RunProblem(
            f"{run_dir}: unfinished ({done} of {steps} steps); finish it with "
            f"`gspo train --resume {run_dir}` or rerun the comparison with --out"
        )
    order = sorted(train)
    keys = TRAIN_KEYS + ((ROUTER_KEY,) if all(ROUTER_KEY in train[s] for s in order) else ())
    series = {k: tuple(train[s][k] for s in order) for k in keys}
    eval_order = sorted(evals)
    return RunData(
        run_dir,
        mode,
        seed,
        clip,
        steps,
        tuple(order),
        series,
        tuple(eval_order),
        tuple(evals[s] for s in eval_order),
        advantage,
    )


def expand_targets(targets: Sequence[Path]) -> list[Path]:
    """Run directories to compare: each target, or a comparison directory's run subdirs."""
    found: list[Path] = []
    for target in targets:
        is_run = (target / METRICS_FILE).exists() or (target / RECIPE_FILE).exists()
        subruns = sorted(
            p
            for p in (target.iterdir() if target.is_dir() and not is_run else [])
            if p.is_dir() and ((p / METRICS_FILE).exists() or (p / RECIPE_FILE).exists())
        )
        found += subruns or [target]
    first: dict[Path, Path] = {}  # a run named twice counts once
    for path in found:
        first.setdefault(path.resolve(), path)
    return list(first.values())


def load_runs(run_dirs: Sequence[Path]) -> tuple[list[RunData], list[str]]:
    """Every readable finished run, and one note per run that is not."""
    runs: list[RunData] = []
    problems: list[str] = []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except RunProblem as exc:
            problems.append(f"{exc}; left out of the comparison")
    return runs, problems
