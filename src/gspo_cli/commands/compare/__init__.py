"""`gspo compare`: plan GSPO-vs-GRPO ablation runs, read finished runs, aggregate, report.

A comparison runs one recipe once per algorithm and seed (`plan`), reads each finished run
back through the documented metrics schema (`runs`), aggregates over seeds (`stats`) and
writes report.md (`report`) and PNG plots (`plots`) into the comparison directory (`files`,
the only writer). Nothing here prints: `cli` renders the returned data. None of it imports
torch, so comparing finished runs never loads it.
"""

from gspo_cli.commands.compare.files import write_plots, write_report, write_run_plot
from gspo_cli.commands.compare.plan import (
    PlannedRun,
    RunState,
    clear_unfinished,
    plan_runs,
    run_dir_name,
    run_mapping,
    run_state,
)
from gspo_cli.commands.compare.plots import COLORS, PANELS, ROUTER_PANEL, Band, band, panels, smooth
from gspo_cli.commands.compare.report import report_markdown
from gspo_cli.commands.compare.runs import (
    ROUTER_KEY,
    TRAIN_KEYS,
    RunData,
    RunProblem,
    expand_targets,
    load_run,
    load_runs,
)
from gspo_cli.commands.compare.stats import (
    COLUMNS,
    FINAL_REWARD_FRACTION,
    AlgoSummary,
    RunSummary,
    Stat,
    aggregate,
    columns,
    format_stat,
    headline,
    stat,
    summarise_run,
)

__all__ = [
    "COLORS",
    "COLUMNS",
    "FINAL_REWARD_FRACTION",
    "PANELS",
    "ROUTER_KEY",
    "ROUTER_PANEL",
    "TRAIN_KEYS",
    "AlgoSummary",
    "Band",
    "PlannedRun",
    "RunData",
    "RunProblem",
    "RunState",
    "RunSummary",
    "Stat",
    "aggregate",
    "band",
    "clear_unfinished",
    "columns",
    "expand_targets",
    "format_stat",
    "headline",
    "load_run",
    "load_runs",
    "panels",
    "plan_runs",
    "report_markdown",
    "run_dir_name",
    "run_mapping",
    "run_state",
    "smooth",
    "stat",
    "summarise_run",
    "write_plots",
    "write_report",
    "write_run_plot",
]
