"""Plots of one run (`gspo plot RUN_DIR`, the end of `gspo train`): compare's panels, with
axis labels and a log-scale clip fraction, written into the run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compare import PNG_MAGIC, make_run
from typer.testing import CliRunner

from gspo_cli.cli import app
from gspo_cli.commands import compare
from gspo_cli.commands.compare.plots import YLABELS, summary_figure

REWARDS = [0.1, 0.2, 0.3, 0.5]
CLIPS = [0.01, 0.02, 0.001, 0.004]


def test_one_run_plot_is_written_into_the_run_directory(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "gspo", 0, REWARDS, CLIPS, {0: 0.25, 4: 0.5})
    path = compare.write_run_plot(run)
    assert path == run / "summary.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl", "recipe.yaml", "summary.png"]


def test_one_run_panels_have_labels_and_a_log_clip_axis(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "grpo", 0, REWARDS, CLIPS, {0: 0.25, 4: 0.5})
    groups = compare.aggregate([compare.load_run(run)])
    fig = summary_figure(groups, "title")
    axes = fig.axes
    assert len(axes) == 8, "4 metrics × (by step, by wall time)"
    assert [a.get_ylabel() for a in axes[:4]] == [YLABELS[k] for k, _, _ in compare.PANELS]
    assert {a.get_xlabel() for a in axes[:4]} == {"rollout step"}
    assert {a.get_xlabel() for a in axes[4:]} == {"training wall time (s)"}
    clip_axes = [a for a in axes if a.get_title().startswith("clip fraction")]
    assert [a.get_yscale() for a in clip_axes] == ["log", "log"]
    (line,) = axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx(REWARDS)
    assert fig.get_suptitle() == "title"


def test_an_unfinished_run_is_plotted_so_far(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", "gspo", 0, REWARDS, CLIPS, {0: 0.25, 4: 0.5}, steps=10)
    with pytest.raises(compare.RunProblem, match="unfinished"):
        compare.load_run(run)
    result = CliRunner().invoke(app, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert f"plots {run / 'summary.png'}" in result.output.replace("\n", "")


def test_plot_of_a_directory_without_metrics_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "missing metrics.jsonl" in result.output
    assert list(tmp_path.iterdir()) == []
