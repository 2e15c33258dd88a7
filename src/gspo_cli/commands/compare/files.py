"""What a comparison writes into its directory: report.md and the PNG plots, atomically; and
the one picture of a single run (`write_run_plot`, for `gspo plot` and the end of `gspo train`).

The only module of `compare` that writes files; the text and figures come from `report` and
`plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gspo_cli.base.storage import write_file_atomic, write_text_atomic
from gspo_cli.commands.compare.plots import figures, summary_figure
from gspo_cli.commands.compare.runs import load_run
from gspo_cli.commands.compare.stats import AlgoSummary, aggregate, format_stat
from gspo_cli.rundir.paths import REPORT_FILE, SUMMARY_PNG

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_report(out_dir: Path, text: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILE
    write_text_atomic(path, text)
    return path


def write_plots(out_dir: Path, groups: Sequence[AlgoSummary]) -> list[Path]:
    """summary.png (a 2×4 grid, 2×5 with router drift: each metric against step and against
    wall time) and one PNG per metric; lines are means over seeds with a min-max band.
    Headless (Agg)."""
    if not groups:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in figures(groups):
        path = out_dir / name
        _save_png(fig, path)
        written.append(path)
    return written


def write_run_plot(run_dir: Path) -> Path:
    """RUN/summary.png: compare's panels for one run (finished or not), titled with the run's
    name, algorithm and eval accuracy from first to last. Raises RunProblem when the run
    cannot be read."""
    run = load_run(run_dir, unfinished_ok=True)
    (group,) = aggregate([run])
    first, last = run.eval_accuracy[0], format_stat(group.stats["final_accuracy"], "")
    done = f"{run.train_steps[-1]} of {run.steps} steps"
    title = f"{run_dir.name}: {group.label}, {done}, eval accuracy {first:.3f} → {last}"
    path = run_dir / SUMMARY_PNG
    _save_png(summary_figure([group], title), path)
    return path


def _save_png(fig: Figure, path: Path) -> None:
    """Render to a temporary file beside `path`, then rename it into place."""
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
