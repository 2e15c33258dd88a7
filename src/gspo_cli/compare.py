"""`gspo compare`: plan GSPO-vs-GRPO ablation runs, read finished runs, aggregate, report.

A comparison runs one recipe once per algorithm and seed. The runs differ only in
`algo.mode`, its default clip range and `seed`; an explicit `--set` applies to all of them.
Each run is read back through the documented `metrics.jsonl` schema (train rows: `step`,
`reward_mean`, `clip_frac`, `ratio_mean`, `step_s`, `tokens_per_s`; eval rows: `step`,
`eval_accuracy`) plus `recipe.yaml` for the algorithm, clip range, seed and planned steps.
A missing, unfinished or corrupt run becomes a one-line note and the others are still
compared. Nothing here prints: `cli.py` renders the returned data.

Aggregates are over seeds: mean ± sample standard deviation (0 for one seed), with the min
and max kept for the plots' bands.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gspo_cli.checkpoint import write_text_atomic
from gspo_cli.errors import UserError
from gspo_cli.metrics import read_metrics
from gspo_cli.recipe import DEFAULT_CLIP, Recipe, apply_override, validate
from gspo_cli.runfiles import (
    EVAL_FILE,
    FINAL_DIR,
    METRICS_FILE,
    RECIPE_FILE,
    REPORT_FILE,
    RUN_FILES,
    SAMPLES_FILE,
    SUMMARY_PNG,
)
from gspo_cli.storage import write_file_atomic

TRAIN_KEYS = ("reward_mean", "clip_frac", "ratio_mean", "step_s", "tokens_per_s")
ROUTER_KEY = "router_drift"  # mixture-of-experts runs only: compared when every row has it
FINAL_REWARD_FRACTION = 0.1  # "final reward": mean reward_mean over the last 10% of steps


# --- planning --------------------------------------------------------------------------------


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

    A clip range written in the recipe file belongs to the file's own mode, so it is dropped
    for a run of another mode (which then takes that mode's default); a clip range given with
    `--set` applies to every run. `--set algo.mode` and `--set seed` are replaced by the run's.
    """
    mapping = copy.deepcopy(raw)
    notes: list[str] = []
    section = mapping.get("algo")
    if isinstance(section, dict):
        file_mode = section.get("mode", "gspo")
        dropped = [k for k in ("clip_low", "clip_high") if k in section]
        if file_mode != algo and dropped:
            for key in dropped:
                del section[key]
            notes.append(
                f"{algo}: the recipe's algo.{'/'.join(dropped)} belong to its mode {file_mode} "
                f"and are not used; {algo} takes its default clip range (--set one to apply it "
                "to every run)"
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


# --- reading runs ----------------------------------------------------------------------------


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


def _read_recipe(run_dir: Path) -> tuple[str, int, tuple[float, float], int]:
    """(mode, seed, (clip_low, clip_high), train.steps) from a run's recipe.yaml."""
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
    return mode, seed, clip, steps


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


def load_run(run_dir: Path) -> RunData:
    """Read one finished run, or raise RunProblem saying why it cannot be compared."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunProblem(f"{run_dir}: a file, not a run directory")
    if not run_dir.is_dir():
        raise RunProblem(f"{run_dir}: missing (no such directory)")
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise RunProblem(f"{run_dir}: missing {METRICS_FILE} (the run never started)")
    if not (run_dir / RECIPE_FILE).is_file():
        raise RunProblem(f"{run_dir}: missing {RECIPE_FILE}, so its algorithm is unknown")
    mode, seed, clip, steps = _read_recipe(run_dir)
    try:
        train, evals = _read_rows(metrics)
    except RunProblem as exc:
        raise RunProblem(f"corrupt: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunProblem(f"{metrics}: unreadable ({exc})") from None
    if not train or not evals:
        raise RunProblem(f"{metrics}: no {'train' if not train else 'eval'} rows")
    done = max(train)
    if done < steps:
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


# --- aggregating ------------------------------------------------------------------------------


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _mean(values: Sequence[float]) -> float:
    kept = _finite(values)
    return sum(kept) / len(kept) if kept else math.nan


@dataclass(frozen=True)
class RunSummary:
    path: Path
    algo: str
    seed: int
    start_accuracy: float  # the evaluation before training
    final_accuracy: float  # the last evaluation
    best_accuracy: float
    final_reward: float  # mean reward_mean over the last 10% of steps (at least one)
    clip_frac: float  # mean over steps
    wall_s: float  # sum of step_s (evaluations excluded)
    tokens_per_s: float  # mean over steps
    router_drift: float  # mean over steps; nan for a dense model


def summarise_run(run: RunData) -> RunSummary:
    rewards = run.series["reward_mean"]
    tail = max(1, math.ceil(len(rewards) * FINAL_REWARD_FRACTION))
    return RunSummary(
        path=run.path,
        algo=run.algo,
        seed=run.seed,
        start_accuracy=run.eval_accuracy[0],
        final_accuracy=run.eval_accuracy[-1],
        best_accuracy=max(_finite(run.eval_accuracy), default=math.nan),
        final_reward=_mean(rewards[-tail:]),
        clip_frac=_mean(run.series["clip_frac"]),
        wall_s=sum(_finite(run.series["step_s"])),
        tokens_per_s=_mean(run.series["tokens_per_s"]),
        router_drift=_mean(run.series.get(ROUTER_KEY, ())),
    )


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample standard deviation; 0 for a single value
    low: float
    high: float
    n: int


def stat(values: Sequence[float]) -> Stat:
    kept = _finite(values)
    if not kept:
        return Stat(math.nan, math.nan, math.nan, math.nan, 0)
    mean = sum(kept) / len(kept)
    var = sum((v - mean) ** 2 for v in kept) / (len(kept) - 1) if len(kept) > 1 else 0.0
    return Stat(mean, math.sqrt(var), min(kept), max(kept), len(kept))


COLUMNS: dict[str, str] = {  # RunSummary field -> column title
    "final_accuracy": "final acc",
    "best_accuracy": "best acc",
    "final_reward": "reward",
    "clip_frac": "clip frac",
    "wall_s": "wall s",
    "tokens_per_s": "tok/s",
    ROUTER_KEY: "router drift",  # shown only when some run has it (`columns`)
}


def columns(groups: Sequence[AlgoSummary]) -> dict[str, str]:
    """The table's columns: COLUMNS, without router drift when no run is a MoE run."""
    moe = any(g.stats[ROUTER_KEY].n for g in groups)
    return {k: v for k, v in COLUMNS.items() if moe or k != ROUTER_KEY}


@dataclass(frozen=True)
class AlgoSummary:
    label: str  # the mode, plus the clip range when runs of one mode differ in it
    runs: tuple[RunData, ...]
    summaries: tuple[RunSummary, ...]
    stats: dict[str, Stat]  # COLUMNS key -> over seeds

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.runs)


def _label(run: RunData, clips_by_mode: dict[str, set[tuple[float, float]]]) -> str:
    if len(clips_by_mode[run.algo]) == 1:
        return run.algo
    return f"{run.algo} ε {run.clip[0]:g}/{run.clip[1]:g}"


def aggregate(runs: Sequence[RunData]) -> list[AlgoSummary]:
    """Runs grouped by algorithm (gspo, gspo_token, grpo, then others), with stats over seeds."""
    clips: dict[str, set[tuple[float, float]]] = {}
    for run in runs:
        clips.setdefault(run.algo, set()).add(run.clip)
    groups: dict[str, list[RunData]] = {}
    modes = list(DEFAULT_CLIP)  # gspo, gspo_token, grpo: the same order (and colour) every time
    for run in sorted(runs, key=lambda r: modes.index(r.algo) if r.algo in modes else len(modes)):
        groups.setdefault(_label(run, clips), []).append(run)
    result = []
    for label, members in groups.items():
        summaries = tuple(summarise_run(r) for r in members)
        stats = {key: stat([getattr(s, key) for s in summaries]) for key in COLUMNS}
        result.append(AlgoSummary(label, tuple(members), summaries, stats))
    return result


def format_stat(value: Stat, key: str) -> str:
    """`mean ± std` with digits suited to the column (± omitted for one seed)."""
    if value.n == 0:
        return "-"
    formats = {"wall_s": ".0f", "tokens_per_s": ".0f", "clip_frac": ".2g", ROUTER_KEY: ".2g"}
    digits = formats.get(key, ".3f")
    text = f"{value.mean:{digits}}"
    return text if value.n == 1 else f"{text} ± {value.std:{digits}}"


def headline(groups: Sequence[AlgoSummary]) -> str:
    """One line naming the winner on final eval accuracy, and the clip-fraction ratio."""
    ranked = sorted(
        (g for g in groups if g.stats["final_accuracy"].n),
        key=lambda g: g.stats["final_accuracy"].mean,
        reverse=True,
    )
    if not ranked:
        return "no finished runs to compare"
    parts = [
        f"{g.label} {format_stat(g.stats['final_accuracy'], 'final_accuracy')}" for g in ranked
    ]
    line = f"final eval accuracy: {', '.join(parts)}"
    accuracies = [g.stats["final_accuracy"].mean for g in ranked]
    if len(ranked) > 1 and accuracies[0] > accuracies[1]:
        line = f"{ranked[0].label} leads; {line}"
    clip = [(g.label, g.stats["clip_frac"].mean) for g in groups if g.stats["clip_frac"].n]
    positive = [(label, c) for label, c in clip if c > 0]
    if len(positive) >= 2:
        (hi_label, hi), (lo_label, lo) = (
            max(positive, key=lambda x: x[1]),
            min(positive, key=lambda x: x[1]),
        )
        if hi_label != lo_label:
            line += f"; clip fraction {hi_label} {hi:.3g} vs {lo_label} {lo:.3g} ({hi / lo:.0f}×)"
    return line


# --- report -----------------------------------------------------------------------------------


def report_markdown(
    groups: Sequence[AlgoSummary], command: str, problems: Sequence[str], plots: Sequence[Path]
) -> str:
    """report.md: headline, the table, the command, per-run paths, plots and notes."""
    lines = ["# GSPO / GRPO comparison", "", headline(groups), ""]
    shown = columns(groups)
    header = ["algorithm", "seeds", *shown.values()]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        cells = [format_stat(g.stats[k], k) for k in shown]
        lines.append(f"| {g.label} | {', '.join(map(str, g.seeds))} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± sample std over seeds. Final and best acc: the last and the highest held-out "
        "`eval_accuracy`; reward: mean `reward_mean` over the last 10% of steps; clip frac: "
        "mean `clip_frac` over steps; wall s: sum of `step_s` (evaluations excluded); tok/s: "
        "mean `tokens_per_s`"
        + ("; router drift: mean `router_drift` over steps." if ROUTER_KEY in shown else "."),
        "",
        "## Command",
        "",
        f"```\n{command}\n```",
        "",
        "## Runs",
        "",
        "| algorithm | seed | clip ε low/high | eval acc start → final (best) | run |",
        "|---|---|---|---|---|",
    ]
    for g in groups:
        for run, s in zip(g.runs, g.summaries, strict=True):
            lines.append(
                f"| {g.label} | {run.seed} | {run.clip[0]:g} / {run.clip[1]:g} | "
                f"{s.start_accuracy:.3f} → {s.final_accuracy:.3f} ({s.best_accuracy:.3f}) | "
                f"`{run.path}` |"
            )
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Notes", ""]
    lines += [f"- {p}" for p in problems] or ["- every run was finished and readable"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, text: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    write_text_atomic(path, text)
    return path


# --- plots ------------------------------------------------------------------------------------

# (series key or "eval_accuracy", title, log y-scale)
PANELS: tuple[tuple[str, str, bool], ...] = (
    ("reward_mean", "reward (mean per step)", False),
    ("eval_accuracy", "held-out eval accuracy", False),
    ("clip_frac", "clip fraction (log scale)", True),
    ("ratio_mean", "importance ratio (mean)", False),
)
ROUTER_PANEL = (ROUTER_KEY, "router drift: (token, layer) expert sets changed", False)


def panels(groups: Sequence[AlgoSummary]) -> tuple[tuple[str, str, bool], ...]:
    """PANELS, plus router drift when some run is a mixture-of-experts run."""
    moe = any(ROUTER_KEY in r.series for g in groups for r in g.runs)
    return PANELS + ((ROUTER_PANEL,) if moe else ())


COLORS = {"gspo": "C0", "grpo": "C1", "gspo_token": "C2"}  # matplotlib's default cycle


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over `window` values (fewer at the start); nan is skipped.

    >>> smooth([1.0, 3.0, 5.0], 2)
    [1.0, 2.0, 4.0]
    """
    out = []
    for i in range(len(values)):
        out.append(_mean(values[max(0, i - window + 1) : i + 1]))
    return out


@dataclass(frozen=True)
class Band:
    """One algorithm's curve: the mean over seeds and its min-max band."""

    x: tuple[float, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


def _run_curve(run: RunData, key: str, window: int) -> dict[int, tuple[float, float]]:
    """step -> (training wall seconds at that step, value) for one run's metric."""
    if key == "eval_accuracy":
        points = zip(run.eval_steps, run.eval_wall, run.eval_accuracy, strict=True)
    else:
        values = smooth(run.series[key], window)
        points = zip(run.train_steps, run.wall, values, strict=True)
    return {step: (wall, value) for step, wall, value in points}


def band(runs: Sequence[RunData], key: str, by_wall: bool, window: int = 1) -> Band:
    """Mean and min-max over runs at the steps they all share. Against wall time, a step's x is
    the mean over runs of the training seconds each took to reach it, so every curve runs to
    its end even when one seed ran slower."""
    curves = [_run_curve(r, key, window) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    at = [[c[s][1] for c in curves] for s in steps]
    xs = [_mean([c[s][0] for c in curves]) if by_wall else float(s) for s in steps]
    return Band(
        tuple(xs),
        tuple(_mean(v) for v in at),
        tuple(min(_finite(v), default=math.nan) for v in at),
        tuple(max(_finite(v), default=math.nan) for v in at),
    )


def _draw(ax: Any, groups: Sequence[AlgoSummary], key: str, log: bool, by_wall: bool) -> None:
    title = next(t for k, t, _ in (*PANELS, ROUTER_PANEL) if k == key)
    positive = False
    for i, group in enumerate(groups):
        if key != "eval_accuracy" and not all(key in r.series for r in group.runs):
            continue  # dense runs have no router drift
        steps = min(len(r.train_steps) for r in group.runs)
        window = 1 if key == "eval_accuracy" else max(1, steps // 50)
        b = band(group.runs, key, by_wall, window)
        mode = group.runs[0].algo
        color = COLORS.get(mode, f"C{i + len(COLORS)}")
        seeds = f"{len(group.runs)} seed{'s' if len(group.runs) > 1 else ''}"
        marker = "o" if key == "eval_accuracy" and len(b.x) < 30 else None
        ax.plot(b.x, b.mean, color=color, marker=marker, ms=3, label=f"{group.label} ({seeds})")
        positive = positive or any(v > 0 for v in b.mean)
        if len(group.runs) > 1:
            ax.fill_between(b.x, b.low, b.high, color=color, alpha=0.2, linewidth=0)
    if log and positive:  # zeros are left out; all-zero data stays linear
        ax.set_yscale("log", nonpositive="mask")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("training wall time (s)" if by_wall else "step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _save_png(fig: Any, path: Path) -> None:
    """Render to a temporary file beside `path`, then rename it into place."""
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def write_plots(out_dir: Path, groups: Sequence[AlgoSummary]) -> list[Path]:
    """summary.png (a 2×4 grid, 2×5 with router drift: each metric against step and against
    wall time) and one PNG per metric; lines are means over seeds with a min-max band.
    Headless (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not groups:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    shown = panels(groups)
    fig = Figure(figsize=(5 * len(shown), 9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(shown))
    for col, (key, _, log) in enumerate(shown):
        for row, by_wall in enumerate((False, True)):
            _draw(axes[row][col], groups, key, log, by_wall)
    fig.suptitle(headline(groups), fontsize=12)
    path = out_dir / SUMMARY_PNG
    _save_png(fig, path)
    written.append(path)
    for key, _, log in shown:
        fig = Figure(figsize=(11, 4), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        _draw(left, groups, key, log, by_wall=False)
        _draw(right, groups, key, log, by_wall=True)
        path = out_dir / f"{key}.png"
        _save_png(fig, path)
        written.append(path)
    return written


# Files a run directory may hold (a run's own, and what `gspo eval RUN_DIR` writes there); an
# unfinished run with nothing else is safe to clear.
_RUN_ENTRIES = {*RUN_FILES, EVAL_FILE, SAMPLES_FILE}


def clear_unfinished(run_dir: Path) -> None:
    """Delete an unfinished run that has no checkpoint to resume from, so it can restart.
    Refuses (UserError) when the directory holds anything a run does not write."""
    import shutil

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
