"""Plots of a comparison: each metric against step and against training wall time.

Lines are means over seeds with a min-max band, smoothed for train metrics on long runs.
Headless: matplotlib's Agg canvas, never pyplot, and matplotlib is imported only when the
figures are drawn. Nothing here writes files (`files.write_plots` does).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gspo_cli.commands.compare.runs import ROUTER_KEY, RunData
from gspo_cli.commands.compare.stats import AlgoSummary, finite, finite_mean, headline
from gspo_cli.rundir.paths import SUMMARY_PNG

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (series key or "eval_accuracy", title, log y-scale)
PANELS: tuple[tuple[str, str, bool], ...] = (
    ("reward_mean", "reward (mean per step)", False),
    ("eval_accuracy", "held-out eval accuracy", False),
    ("clip_frac", "clip fraction (log scale)", True),
    ("ratio_mean", "importance ratio (mean)", False),
)
ROUTER_PANEL = (ROUTER_KEY, "router drift: (token, layer) expert sets changed", False)
# The y axis of each panel, with its unit (metrics.jsonl's meanings; README: Metrics).
YLABELS = {
    "reward_mean": "reward (mean over completions)",
    "eval_accuracy": "greedy accuracy (fraction correct)",
    "clip_frac": "fraction clipped (log)",
    "ratio_mean": "π / π_old (1 = on-policy)",
    ROUTER_KEY: "fraction changed",
}


def panels(groups: Sequence[AlgoSummary]) -> tuple[tuple[str, str, bool], ...]:
    """PANELS, plus router drift when some run is a mixture-of-experts run."""
    moe = any(ROUTER_KEY in r.series for g in groups for r in g.runs)
    return PANELS + ((ROUTER_PANEL,) if moe else ())


# One colour (matplotlib's default cycle) and one line style per mode, so that six or seven
# curves stay apart in colour and in print; unknown modes take the next colours, solid.
COLORS = {
    "gspo": "C0",
    "grpo": "C1",
    "gspo_token": "C2",
    "dr_grpo": "C3",
    "dapo": "C4",
    "cispo": "C5",
    "gmpo": "C6",
}
LINESTYLES = {
    "gspo": "-",
    "grpo": "--",
    "gspo_token": ":",
    "dr_grpo": "-.",
    "dapo": (0, (6, 2)),
    "cispo": (0, (4, 1, 1, 1, 1, 1)),
    "gmpo": (0, (1, 1.5)),
}


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over `window` values (fewer at the start); nan is skipped.

    >>> smooth([1.0, 3.0, 5.0], 2)
    [1.0, 2.0, 4.0]
    """
    out = []
    for i in range(len(values)):
        out.append(finite_mean(values[max(0, i - window + 1) : i + 1]))
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
    xs = [finite_mean([c[s][0] for c in curves]) if by_wall else float(s) for s in steps]
    return Band(
        tuple(xs),
        tuple(finite_mean(v) for v in at),
        tuple(min(finite(v), default=math.nan) for v in at),
        tuple(max(finite(v), default=math.nan) for v in at),
    )


def _draw(ax: Any, groups: Sequence[AlgoSummary], key: str, log: bool, by_wall: bool) -> None:
    """One panel: each algorithm's mean over seeds, with its min-max band. The legend is the
    figure's (`_legend`), outside every panel, so it never covers a curve."""
    title = next(t for k, t, _ in (*PANELS, ROUTER_PANEL) if k == key)
    positive = False
    for i, group in enumerate(groups):
        if key != "eval_accuracy" and not all(key in r.series for r in group.runs):
            continue  # dense runs have no router drift
        steps = min(len(r.train_steps) for r in group.runs)
        window = 1 if key == "eval_accuracy" else max(1, steps // 50)
        b = band(group.runs, key, by_wall, window)
        mode = group.runs[0].algo
        color = COLORS.get(mode, f"C{(i + len(COLORS)) % 10}")
        style = LINESTYLES.get(mode, "-")
        seeds = f"{len(group.runs)} seed{'s' if len(group.runs) > 1 else ''}"
        marker = "o" if key == "eval_accuracy" and len(b.x) < 30 else None
        label = f"{group.label} ({seeds})"
        ax.plot(b.x, b.mean, color=color, ls=style, lw=1.4, marker=marker, ms=3, label=label)
        positive = positive or any(v > 0 for v in b.mean)
        if len(group.runs) > 1:
            ax.fill_between(b.x, b.low, b.high, color=color, alpha=0.12, linewidth=0)
    if log and positive:  # zeros are left out; all-zero data stays linear
        ax.set_yscale("log", nonpositive="mask")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("training wall time (s)" if by_wall else "rollout step")
    ax.set_ylabel(YLABELS[key])
    ax.grid(True, alpha=0.3)


def _legend(fig: Figure, axes: Sequence[Any], columns: int) -> None:
    """One legend for the figure, below the panels: every algorithm once, in table order."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        fig.legend(
            list(entries.values()),
            list(entries),
            loc="outside lower center",
            ncols=min(len(entries), columns),
            fontsize=9,
            frameon=False,
        )


def summary_figure(groups: Sequence[AlgoSummary], title: str | None = None) -> Figure:
    """summary.png: a 2×4 grid (2×5 with router drift), each metric against step and against
    wall time; titled with the headline unless `title` is given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = panels(groups)
    fig = Figure(figsize=(5 * len(shown), 9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(shown))
    for col, (key, _, log) in enumerate(shown):
        for row, by_wall in enumerate((False, True)):
            _draw(axes[row][col], groups, key, log, by_wall)
    _legend(fig, [ax for row_axes in axes for ax in row_axes], columns=7)
    fig.suptitle(title or headline(groups), fontsize=12, wrap=True)
    return fig


def figures(groups: Sequence[AlgoSummary]) -> Iterator[tuple[str, Figure]]:
    """summary.png (`summary_figure`), then one figure per metric, each with the name of its
    PNG file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    yield SUMMARY_PNG, summary_figure(groups)
    for key, _, log in panels(groups):
        fig = Figure(figsize=(11, 4.8), layout="constrained")
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        _draw(left, groups, key, log, by_wall=False)
        _draw(right, groups, key, log, by_wall=True)
        _legend(fig, [left, right], columns=4)
        yield f"{key}.png", fig
