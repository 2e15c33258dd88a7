"""Commands that load no model import neither torch nor transformers: `gspo --help`, and
`gspo compare` on finished runs (reading metrics, aggregating, report.md and plots)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gspo_cli.commands.compare import plan_runs

from cli_runs import cli_env, write_fake_run

# Runs the CLI in this process, then names any heavy module the command imported.
WRAPPER = """
import sys
from gspo_cli.cli import app
code = app(sys.argv[1:], standalone_mode=False)
assert code in (None, 0), f"exit code {code}"
heavy = [m for m in ("torch", "transformers") if m in sys.modules]
assert not heavy, f"imported {heavy}"
print("light")
"""


def run_light(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )


def test_help_imports_no_torch() -> None:
    """`gspo --help` lists the commands without importing torch or transformers."""
    result = run_light("--help")
    assert result.returncode == 0, result.stderr
    assert "compare" in result.stdout, "the help lists the commands"
    assert result.stdout.rstrip().endswith("light"), result.stdout


def test_compare_of_finished_runs_imports_no_torch(tmp_path: Path) -> None:
    """`gspo compare RUN RUN --out DIR` writes the report and plots without importing torch."""
    planned, _ = plan_runs({}, ["gspo", "grpo"], [0], ["train.steps=2"], tmp_path, "default")
    for p in planned:
        p.run_dir.mkdir()
        write_fake_run(p.recipe, p.run_dir, p.recipe.train.steps)
    out = tmp_path / "report"
    result = run_light("compare", *(str(p.run_dir) for p in planned), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("light"), result.stdout
    assert "gspo leads" in result.stdout, "the headline names the winner"
    assert (out / "report.md").is_file() and (out / "summary.png").is_file()


def test_plot_of_a_run_imports_no_torch(tmp_path: Path) -> None:
    """`gspo plot RUN` draws the run's panels into RUN/summary.png without importing torch."""
    planned, _ = plan_runs({}, ["gspo"], [0], ["train.steps=2"], tmp_path, "default")
    run_dir = planned[0].run_dir
    run_dir.mkdir()
    write_fake_run(planned[0].recipe, run_dir, 2)
    result = run_light("plot", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("light"), result.stdout
    assert (run_dir / "summary.png").is_file()
