"""report.md as text: headline, table, algorithms, command, per-run paths, plots and notes;
pure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gspo_cli.base.constants import MODE_INFO
from gspo_cli.commands.compare.runs import ROUTER_KEY
from gspo_cli.commands.compare.stats import AlgoSummary, columns, format_stat, headline

ADVANTAGES = {  # algo.advantage_scale -> the advantage in words
    "group": "(r - group mean) / group std",
    "batch": "(r - group mean) / batch std",
    "none": "r - group mean",
}


def algorithm_rows(groups: Sequence[AlgoSummary]) -> list[str]:
    """The "Algorithms" table: per algorithm its ratio, aggregation, advantage, the clip
    range its runs used, and the paper (from `MODE_INFO`; "-" for an unknown mode)."""
    lines = [
        "| algorithm | ratio | aggregation | advantage | clip ε low / high | source |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        mode = g.runs[0].algo
        info = MODE_INFO.get(mode)
        clips = ", ".join(f"{lo:g} / {hi:g}" for lo, hi in sorted({r.clip for r in g.runs}))
        scales = sorted({r.advantage for r in g.runs})
        advantage = ", ".join(ADVANTAGES.get(s, s) for s in scales)
        ratio, aggregation, source = info if info else ("-", "-", "-")
        lines.append(f"| {g.label} | {ratio} | {aggregation} | {advantage} | {clips} | {source} |")
    return lines


def report_markdown(
    groups: Sequence[AlgoSummary], command: str, problems: Sequence[str], plots: Sequence[Path]
) -> str:
    """report.md: headline, the table, the command, per-run paths, plots and notes."""
    lines = ["# GSPO / GRPO-family comparison", "", headline(groups), ""]
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
        "## Algorithms",
        "",
        *algorithm_rows(groups),
        "",
        "Clip fractions are per response for gspo and gspo_token and per token for the "
        "others (cispo: weights truncated at either bound; gmpo: log-ratios past ±ε), so "
        "compare them within a ratio level.",
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
