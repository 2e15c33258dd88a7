"""Dynamic sampling end to end on the warm-started tiny default: the extra rounds really run,
a resumed run repeats the uninterrupted one (the data position counts every round's prompts),
and two processes under torchrun make the same decisions as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from gspo_cli.rundir.metrics import read_metrics

from cli_runs import SMALL, run_cli, torchrun, train, without_timing

# SMALL with dynamic sampling, overlong filtering and soft punishment, and TIS (a no-op in
# float32, where π_old is the sampler's own log-probs).
SETS = (
    *SMALL,
    "train.eval_every=2",
    "train.save_every=2",
    "rollout.dynamic_sampling=true",
    "rollout.max_extra_rounds=2",
    "rollout.overlong_filter=true",
    "rollout.overlong_buffer=2",
    "algo.tis=true",
)
DYNAMIC = (
    "dynamic/groups_sampled",
    "dynamic/groups_dropped",
    "dynamic/extra_rounds",
    "dynamic/cap_hit",
    "dynamic/filled_groups",
)


def train_rows(run: Path) -> list[dict[str, object]]:
    return [r for r in without_timing(read_metrics(run / "metrics.jsonl")) if "loss" in r]


@pytest.mark.slow
def test_dynamic_sampling_resumes_exactly(warm_tiny: Path, tmp_path: Path) -> None:
    """3 steps in one go equal 2 steps then a resume to 3, every row; some step sampled an
    extra round (the warm model leaves groups with equal rewards); the figures add up; the
    mismatch ledger is 0 and TIS weights 1 (float32)."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, *SETS, "train.steps=3").returncode == 0
    assert train(part, *SETS, "train.steps=2").returncode == 0
    resumed = run_cli("train", "--resume", str(part), "--quiet", sets=("train.steps=3",))
    assert resumed.returncode == 0, resumed.stderr
    assert without_timing(read_metrics(part / "metrics.jsonl")) == without_timing(
        read_metrics(full / "metrics.jsonl")
    )
    rows = train_rows(full)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert any(r["dynamic/extra_rounds"] != 0 for r in rows), rows
    for r in rows:
        sampled, dropped = int(r["dynamic/groups_sampled"]), int(r["dynamic/groups_dropped"])  # type: ignore[call-overload]
        assert sampled == 4 * (1 + int(r["dynamic/extra_rounds"]))  # type: ignore[call-overload]
        filled = max(0, 4 - (sampled - dropped))  # informative groups short of the 4 wanted
        assert r["dynamic/filled_groups"] == filled and r["dynamic/cap_hit"] == int(filled > 0)
        assert r["zero_std_frac"] == filled / 4, "only filler groups have equal rewards"
        assert r["mismatch/token_abs_max"] == 0.0 and r["tis/weight_mean"] == 1.0


@pytest.mark.slow
def test_two_processes_sample_dynamically_as_one(warm_tiny: Path, tmp_path: Path) -> None:
    """torchrun with 2 processes: the same rounds, the same groups kept, the same rewards and
    the same loss (to float rounding) as one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(one, *SETS, "train.steps=2").returncode == 0
    result = torchrun(2, "train", "--quiet", "--out", str(two), sets=(*SETS, "train.steps=2"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for a, b in zip(train_rows(two), train_rows(one), strict=True):
        for key in (*DYNAMIC, "reward_mean", "zero_std_frac", "completion_tokens"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-4)
