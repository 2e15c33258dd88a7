"""Comparison logic on hand-made run directories: reading, aggregates, notes, report, plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from gspo_cli.commands import compare
from gspo_cli.commands.compare import RunProblem, Stat

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def train_row(step: int, reward: float, clip: float, **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "reward_mean": reward,
        "clip_frac": clip,
        "ratio_mean": 1.0 + clip / 10,
        "step_s": 2.0,
        "tokens_per_s": 100.0 * step,
        **extra,
    }


def make_run(
    root: Path,
    name: str,
    mode: str,
    seed: int,
    rewards: list[float],
    clips: list[float],
    evals: dict[int, float],
    steps: int | None = None,
) -> Path:
    """A run directory with recipe.yaml and metrics.jsonl in the documented schema."""
    run = root / name
    run.mkdir(parents=True)
    clip = {"gspo": (3e-4, 4e-4), "grpo": (0.2, 0.27)}[mode]
    recipe = {
        "name": "t",
        "seed": seed,
        "algo": {"mode": mode, "clip_low": clip[0], "clip_high": clip[1]},
        "train": {"steps": steps if steps is not None else len(rewards)},
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    rows: list[dict[str, Any]] = []
    for step in range(len(rewards) + 1):
        if step:  # the trainer logs a step's train row before its evaluation
            rows.append(train_row(step, rewards[step - 1], clips[step - 1]))
        if step in evals:
            rows.append({"step": step, "eval_accuracy": evals[step], "eval_n": 8, "eval_s": 0.1})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


# Ten steps each. GSPO seed 0: rewards 0.0..0.9, so the last 10% (one step) is 0.9.
GSPO0 = ([i / 10 for i in range(10)], [0.1] * 10, {0: 0.2, 5: 0.6, 10: 0.5})
GSPO1 = ([0.7] * 10, [0.3] * 10, {0: 0.2, 5: 0.4, 10: 0.7})
GRPO0 = ([0.5] * 10, [0.001] * 10, {0: 0.2, 5: 0.3, 10: 0.4})


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    return [
        make_run(tmp_path, "gspo-seed0", "gspo", 0, *GSPO0),
        make_run(tmp_path, "gspo-seed1", "gspo", 1, *GSPO1),
        make_run(tmp_path, "grpo-seed0", "grpo", 0, *GRPO0),
    ]


def test_run_summary_hand_computed(three_runs: list[Path]) -> None:
    """One run's figures: last/best eval, last-10% reward, mean clip, summed step_s."""
    s = compare.summarise_run(compare.load_run(three_runs[0]))
    assert (s.algo, s.seed) == ("gspo", 0)
    assert s.start_accuracy == 0.2
    assert s.final_accuracy == 0.5, "the last evaluation, not the best"
    assert s.best_accuracy == 0.6
    assert s.final_reward == pytest.approx(0.9), "10 steps: the last 10% is step 10 alone"
    assert s.clip_frac == pytest.approx(0.1)
    assert s.wall_s == pytest.approx(20.0), "10 steps × 2 s"
    # tokens_per_s is 100·step: mean of 100..1000 = 550
    assert s.tokens_per_s == pytest.approx(550.0)


def test_final_reward_tail_rounds_up(tmp_path: Path) -> None:
    """With 15 steps the last 10% is 2 steps (ceil 1.5)."""
    rewards = [0.0] * 13 + [0.4, 0.8]
    run = make_run(tmp_path, "r", "gspo", 0, rewards, [0.1] * 15, {0: 0.1, 15: 0.2})
    assert compare.summarise_run(compare.load_run(run)).final_reward == pytest.approx(0.6)


def test_aggregate_over_seeds_hand_computed(three_runs: list[Path]) -> None:
    """GSPO final acc 0.5 and 0.7: mean 0.6, sample std √0.02 ≈ 0.1414; GRPO one seed: std 0."""
    runs, problems = compare.load_runs(three_runs)
    assert problems == []
    gspo, grpo = compare.aggregate(runs)
    assert (gspo.label, gspo.seeds, grpo.label, grpo.seeds) == ("gspo", (0, 1), "grpo", (0,))
    acc = gspo.stats["final_accuracy"]
    assert acc.mean == pytest.approx(0.6)
    assert acc.std == pytest.approx(math.sqrt(0.02))
    assert (acc.low, acc.high, acc.n) == (pytest.approx(0.5), pytest.approx(0.7), 2)
    assert gspo.stats["best_accuracy"].mean == pytest.approx(0.65), "best 0.6 and 0.7"
    assert gspo.stats["final_reward"].mean == pytest.approx(0.8), "0.9 and 0.7"
    assert gspo.stats["clip_frac"].mean == pytest.approx(0.2), "0.1 and 0.3"
    assert grpo.stats["final_accuracy"] == Stat(0.4, 0.0, 0.4, 0.4, 1)
    assert grpo.stats["clip_frac"].mean == pytest.approx(0.001)


def test_headline_names_winner_and_clip_ratio(three_runs: list[Path]) -> None:
    """GSPO leads on accuracy and clips 0.2 / 0.001 = 200× more."""
    runs, _ = compare.load_runs(three_runs)
    line = compare.headline(compare.aggregate(runs))
    assert line.startswith("gspo leads"), line
    assert "0.600 ± 0.141" in line and "grpo 0.400" in line, line
    assert "(200×)" in line, line


def test_headline_tie_names_no_leader(tmp_path: Path) -> None:
    """Equal final accuracy: no algorithm is said to lead."""
    a = make_run(tmp_path, "a", "gspo", 0, [0.5], [0.1], {0: 0.2, 1: 0.4})
    b = make_run(tmp_path, "b", "grpo", 0, [0.5], [0.1], {0: 0.2, 1: 0.4})
    runs, _ = compare.load_runs([a, b])
    line = compare.headline(compare.aggregate(runs))
    assert "leads" not in line, line


def test_format_stat() -> None:
    """± only with more than one seed; wall time without decimals; nothing for no values."""
    assert compare.format_stat(Stat(0.6, 0.1414, 0.5, 0.7, 2), "final_accuracy") == "0.600 ± 0.141"
    assert compare.format_stat(Stat(12.4, 0.0, 12.4, 12.4, 1), "wall_s") == "12"
    assert compare.format_stat(compare.stat([]), "wall_s") == "-"


def test_stat_skips_non_finite() -> None:
    """Nulls (nan) in the metrics are left out of means, not propagated."""
    s = compare.stat([1.0, math.nan, 3.0])
    assert (s.mean, s.n) == (2.0, 2)
    assert s.std == pytest.approx(math.sqrt(2.0))


def test_null_values_are_nan_not_errors(tmp_path: Path) -> None:
    """A null ratio (written for a non-finite value) reads as nan and is skipped in the mean."""
    run = make_run(tmp_path, "r", "gspo", 0, [0.5, 0.5], [0.1, 0.1], {0: 0.1, 2: 0.2})
    lines = (run / "metrics.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    row["clip_frac"] = None
    lines[1] = json.dumps(row)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert compare.summarise_run(compare.load_run(run)).clip_frac == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing", "missing (no such directory)"),
        ("no_metrics", "missing metrics.jsonl"),
        ("unfinished", "unfinished (5 of 10 steps)"),
        ("bad_json", "corrupt:"),
        ("no_rows", "no train rows"),
        ("missing_key", "train row without clip_frac"),
        ("bad_recipe", "is not a resolved recipe"),
    ],
)
def test_bad_run_is_named_and_the_rest_compared(
    three_runs: list[Path], tmp_path: Path, damage: str, expected: str
) -> None:
    """A missing, unfinished or corrupt run gives one clear note; the others are compared."""
    bad = tmp_path / "bad"
    if damage != "missing":
        bad = make_run(tmp_path, "bad", "grpo", 1, *GRPO0)
    metrics = bad / "metrics.jsonl"
    if damage == "no_metrics":
        metrics.unlink()
    elif damage == "unfinished":
        rows = metrics.read_text().splitlines()
        metrics.write_text("\n".join(rows[:7]) + "\n")  # eval 0, steps 1-5, eval 5
    elif damage == "bad_json":
        rows = metrics.read_text().splitlines()
        metrics.write_text("\n".join([*rows[:3], '{"step": 3, "rew', *rows[3:]]) + "\n")
    elif damage == "no_rows":
        metrics.write_text('{"step": 0, "eval_accuracy": 0.2}\n')
    elif damage == "missing_key":
        metrics.write_text('{"step": 1, "reward_mean": 0.5, "step_s": 1}\n')
    elif damage == "bad_recipe":
        (bad / "recipe.yaml").write_text("algo: [not, a, mapping]\n")
    runs, problems = compare.load_runs([*three_runs, bad])
    assert [r.path for r in runs] == three_runs, "the good runs are all still compared"
    (problem,) = problems
    assert expected in problem, problem
    assert str(bad) in problem and "left out" in problem, problem


def test_run_problem_message_for_unfinished_says_how_to_finish(tmp_path: Path) -> None:
    """An unfinished run's note says how to resume it."""
    run = make_run(tmp_path, "r", "gspo", 0, [0.5] * 3, [0.1] * 3, {0: 0.1}, steps=10)
    with pytest.raises(RunProblem, match=r"gspo train --resume"):
        compare.load_run(run)


def test_run_state(tmp_path: Path) -> None:
    """new: nothing written; finished: final/ and metrics reaching train.steps; else unfinished."""
    run = tmp_path / "r"
    assert compare.run_state(run, 10) == "new"
    make_run(tmp_path, "r", "gspo", 0, [0.5] * 10, [0.1] * 10, {0: 0.1, 10: 0.2})
    assert compare.run_state(run, 10) == "unfinished", "no final/ yet"
    (run / "final").mkdir()
    assert compare.run_state(run, 10) == "finished"
    assert compare.run_state(run, 12) == "unfinished", "train.steps was raised"


def test_expand_comparison_dir(three_runs: list[Path], tmp_path: Path) -> None:
    """A comparison directory stands for its run subdirectories."""
    assert compare.expand_targets([tmp_path]) == sorted(three_runs)
    assert compare.expand_targets(three_runs[:1]) == three_runs[:1]
    twice = [three_runs[0], three_runs[1], three_runs[0]]
    assert compare.expand_targets(twice) == three_runs[:2], "a run named twice counts once"


def test_band_by_step_and_by_wall(three_runs: list[Path]) -> None:
    """Mean and min-max of eval accuracy over seeds, at shared steps and on a wall-time grid."""
    runs, _ = compare.load_runs(three_runs[:2])
    b = compare.band(runs, "eval_accuracy", by_wall=False)
    assert b.x == (0.0, 5.0, 10.0)
    assert b.mean == pytest.approx((0.2, 0.5, 0.6))
    assert (b.low, b.high) == (pytest.approx((0.2, 0.4, 0.5)), pytest.approx((0.2, 0.6, 0.7)))
    w = compare.band(runs, "eval_accuracy", by_wall=True)
    assert w.x == pytest.approx((0.0, 10.0, 20.0)), "steps 0, 5, 10 at 2 s per step"
    assert w.mean == b.mean


def test_band_wall_is_mean_over_seeds(tmp_path: Path) -> None:
    """Against wall time a step sits at the mean of the seeds' cumulative step_s."""
    slow = make_run(tmp_path, "slow", "gspo", 1, [0.2, 0.4], [0.1, 0.1], {0: 0.1, 2: 0.3})
    lines = (slow / "metrics.jsonl").read_text().replace('"step_s": 2.0', '"step_s": 4.0')
    (slow / "metrics.jsonl").write_text(lines)
    fast = make_run(tmp_path, "fast", "gspo", 0, [0.4, 0.6], [0.1, 0.1], {0: 0.1, 2: 0.5})
    runs, _ = compare.load_runs([fast, slow])
    w = compare.band(runs, "reward_mean", by_wall=True)
    assert w.x == pytest.approx((3.0, 6.0)), "(2 + 4) / 2 and (4 + 8) / 2"
    assert w.mean == pytest.approx((0.3, 0.5))
    assert (w.low, w.high) == (pytest.approx((0.2, 0.4)), pytest.approx((0.4, 0.6)))
    e = compare.band(runs, "eval_accuracy", by_wall=True)
    assert e.x == pytest.approx((0.0, 6.0)) and e.mean == pytest.approx((0.1, 0.4))


def test_smooth() -> None:
    """Trailing mean over a window, shorter at the start."""
    assert compare.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert compare.smooth([1.0, 3.0], 1) == [1.0, 3.0]


def test_report_lists_table_command_runs_and_notes(three_runs: list[Path], tmp_path: Path) -> None:
    """report.md holds the table, the command, every run's path and the problems."""
    runs, _ = compare.load_runs(three_runs)
    groups = compare.aggregate(runs)
    text = compare.report_markdown(groups, "gspo compare --algos gspo grpo", ["bad: x"], [])
    path = compare.write_report(tmp_path / "cmp", text)
    written = path.read_text()
    assert "| gspo | 0, 1 | 0.600 ± 0.141 |" in written, written
    assert "gspo compare --algos gspo grpo" in written
    assert all(str(run) in written for run in three_runs)
    assert "- bad: x" in written


def test_plots_are_png_files(three_runs: list[Path], tmp_path: Path) -> None:
    """summary.png and one PNG per metric are written, non-empty, and nothing else is left."""
    runs, _ = compare.load_runs(three_runs)
    out = tmp_path / "plots"
    written = compare.write_plots(out, compare.aggregate(runs))
    names = sorted(p.name for p in written)
    expected = ["clip_frac.png", "eval_accuracy.png", "ratio_mean.png", "reward_mean.png"]
    assert names == sorted(["summary.png", *expected])
    for path in written:
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
        assert len(data) > 10_000, f"{path.name} is suspiciously small ({len(data)} bytes)"
    assert sorted(p.name for p in out.iterdir()) == names, "no temporary files left behind"


def test_plots_with_a_single_step_run(tmp_path: Path) -> None:
    """A one-step run (one point per curve) still plots."""
    run = make_run(tmp_path, "r", "grpo", 0, [0.5], [0.0], {0: 0.1, 1: 0.2})
    runs, _ = compare.load_runs([run])
    assert compare.write_plots(tmp_path / "p", compare.aggregate(runs))


def test_plan_runs_modes_clips_and_seeds(tmp_path: Path) -> None:
    """Each run differs in mode, its default clip range and seed; --set applies to all."""
    raw = {"name": "x", "algo": {"mode": "gspo", "clip_low": 3e-4, "clip_high": 4e-4}}
    planned, notes = compare.plan_runs(
        raw, ["gspo", "grpo"], [0, 1], ["optim.lr=1e-4"], tmp_path, "r.yaml"
    )
    got = [(p.algo, p.seed, p.recipe.algo.clip_low, p.recipe.algo.clip_high) for p in planned]
    assert got == [
        ("gspo", 0, 3e-4, 4e-4),
        ("gspo", 1, 3e-4, 4e-4),
        ("grpo", 0, 0.2, 0.27),
        ("grpo", 1, 0.2, 0.27),
    ], "the file's GSPO clip range is not carried into the GRPO runs"
    assert all(p.recipe.optim.lr == 1e-4 for p in planned)
    assert [p.run_dir.name for p in planned] == [
        "gspo-seed0",
        "gspo-seed1",
        "grpo-seed0",
        "grpo-seed1",
    ]
    assert len(notes) == 1 and "grpo" in notes[0], notes
    assert raw["algo"]["clip_low"] == 3e-4, "the caller's mapping is not changed"


def test_plan_runs_rejects_unknown_algorithm(tmp_path: Path) -> None:
    """A misspelt algorithm is a user error naming the choices."""
    from gspo_cli.base.errors import UserError

    with pytest.raises(
        UserError, match=r"unknown algorithm 'ppo'; choose from gspo, gspo_token, grpo"
    ):
        compare.plan_runs({}, ["gspo", "ppo"], [0], [], tmp_path, "default recipe")


def _with_router_drift(run: Path, drifts: list[float]) -> Path:
    """Add `router_drift` (a MoE run's key) to every train row of a made run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        if "reward_mean" in row:
            row["router_drift"] = drifts[row["step"] - 1]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_router_drift_is_compared_only_when_runs_have_it(
    three_runs: list[Path], tmp_path: Path
) -> None:
    """Dense runs: no router column or panel. MoE runs: the mean over steps in the table
    (gspo seeds 0.02 and 0.04 → 0.03 ± 0.014) and a fifth panel."""
    dense = compare.aggregate(compare.load_runs(three_runs)[0])
    assert "router_drift" not in compare.columns(dense)
    assert [k for k, _, _ in compare.panels(dense)] == [k for k, _, _ in compare.PANELS]
    moe_root = tmp_path / "moe"
    runs = [
        _with_router_drift(make_run(moe_root, "g0", "gspo", 0, *GSPO0), [0.01, 0.03] * 5),
        _with_router_drift(make_run(moe_root, "g1", "gspo", 1, *GSPO1), [0.04] * 10),
        make_run(moe_root, "r0", "grpo", 0, *GRPO0),  # a dense run alongside
    ]
    groups = compare.aggregate(compare.load_runs(runs)[0])
    assert compare.columns(groups)["router_drift"] == "router drift"
    gspo, grpo = groups
    assert gspo.stats["router_drift"].mean == pytest.approx(0.03, abs=1e-12)
    assert gspo.stats["router_drift"].std == pytest.approx(0.01 * math.sqrt(2), abs=1e-12)
    assert grpo.stats["router_drift"].n == 0
    text = compare.report_markdown(groups, "cmd", [], [])
    assert "| router drift |" in text and "| 0.03 ± 0.014 |" in text, text
    assert "| grpo | 0 | 0.400 | 0.400 | 0.500 | 0.001 | 20 | 550 | - |" in text, text
    written = compare.write_plots(tmp_path / "plots", groups)
    assert "router_drift.png" in {p.name for p in written}


def test_plan_runs_accepts_every_mode_with_its_defaults(tmp_path: Path) -> None:
    """--algos takes every mode; each run gets its mode's clip range and advantage scale, and
    a recipe file's own advantage scale is not carried into another mode's run."""
    from typing import get_args

    from gspo_cli.base.constants import Mode
    from gspo_cli.recipe import DEFAULT_ADVANTAGE_SCALE, DEFAULT_CLIP

    modes = list(get_args(Mode))
    raw = {"algo": {"mode": "gspo", "advantage_scale": "group"}}
    planned, notes = compare.plan_runs(raw, modes, [0], [], tmp_path, "r.yaml")
    got = {p.algo: (p.recipe.algo.clip_low, p.recipe.algo.clip_high) for p in planned}
    assert got == {m: DEFAULT_CLIP[m] for m in modes}
    scales = {p.algo: p.recipe.algo.advantage_scale for p in planned}
    assert scales == {m: DEFAULT_ADVANTAGE_SCALE[m] for m in modes}
    assert scales["dr_grpo"] == "none", "Dr. GRPO's advantage has no std"
    assert any("dr_grpo" in n and "advantage_scale" in n for n in notes), notes


def test_report_states_each_algorithms_clip_range_and_aggregation(tmp_path: Path) -> None:
    """The Algorithms table names, per algorithm, its ratio, aggregation, advantage (read from
    the run's recipe), the clip range its runs used and the paper."""
    dapo = make_run(tmp_path, "dapo-seed0", "grpo", 0, *GRPO0)
    recipe = yaml.safe_load((dapo / "recipe.yaml").read_text())
    recipe["algo"] = {
        "mode": "dapo",
        "clip_low": 0.2,
        "clip_high": 0.28,
        "advantage_scale": "group",
    }
    (dapo / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    gspo = make_run(tmp_path, "gspo-seed0", "gspo", 0, *GSPO0)
    runs, _ = compare.load_runs([gspo, dapo])
    text = compare.report_markdown(compare.aggregate(runs), "cmd", [], [])
    assert (
        "| dapo | token, clipped (clip-higher) | token mean over the whole minibatch | "
        "(r - group mean) / group std | 0.2 / 0.28 | Yu et al. 2025, arXiv 2503.14476 |"
    ) in text, text
    # a hand-made recipe without algo.advantage_scale says "-", not a guess
    assert (
        "| gspo | sequence (geometric mean of token ratios), clipped | mean over responses "
        "| - | 0.0003 / 0.0004 |" in text
    ), text


def test_every_mode_has_its_own_colour_and_line_style() -> None:
    from typing import get_args

    from gspo_cli.base.constants import Mode
    from gspo_cli.commands.compare.plots import LINESTYLES

    modes = get_args(Mode)
    assert len({compare.COLORS[m] for m in modes}) == len(modes)
    assert len({str(LINESTYLES[m]) for m in modes}) == len(modes)
