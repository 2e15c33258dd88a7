"""What a comparison writes into its directory: report.md and the PNG plots, atomically.

The only module of `compare` that writes files; the text and figures come from `report` and
`plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gspo_cli.base.storage import write_file_atomic, write_text_atomic
from gspo_cli.commands.compare.plots import figures
from gspo_cli.commands.compare.stats import AlgoSummary
from gspo_cli.rundir.paths import REPORT_FILE

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


def _save_png(fig: Figure, path: Path) -> None:
    """Render to a temporary file beside `path`, then rename it into place."""
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
