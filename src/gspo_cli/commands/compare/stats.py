"""Statistics over seeds: one summary per run, then mean ± std per algorithm; pure functions.

Aggregates are over seeds: mean ± sample standard deviation (0 for one seed), with the min
and max kept for the plots' bands. Non-finite values (null in metrics.jsonl) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gspo_cli.commands.compare.runs import ROUTER_KEY, RunData
from gspo_cli.recipe import DEFAULT_CLIP

FINAL_REWARD_FRACTION = 0.1  # "final reward": mean reward_mean over the last 10% of steps


def finite(values: Sequence[float]) -> list[float]:
    """The finite values (a null metric is read as nan)."""
    return [v for v in values if math.isfinite(v)]


def finite_mean(values: Sequence[float]) -> float:
    """The mean of the finite values; nan when there are none."""
    kept = finite(values)
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
        best_accuracy=max(finite(run.eval_accuracy), default=math.nan),
        final_reward=finite_mean(rewards[-tail:]),
        clip_frac=finite_mean(run.series["clip_frac"]),
        wall_s=sum(finite(run.series["step_s"])),
        tokens_per_s=finite_mean(run.series["tokens_per_s"]),
        router_drift=finite_mean(run.series.get(ROUTER_KEY, ())),
    )


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample standard deviation; 0 for a single value
    low: float
    high: float
    n: int


def stat(values: Sequence[float]) -> Stat:
    kept = finite(values)
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
