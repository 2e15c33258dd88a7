"""Experiment trackers (`train.report_to`): what each receives, read back from its own store,
and that a failing tracker is dropped with one warning while the others go on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gspo_cli.base.errors import RecipeError
from gspo_cli.commands.preflight import check_trackers
from gspo_cli.recipe import validate
from gspo_cli.rundir import trackers
from gspo_cli.rundir.metrics import Row
from gspo_cli.rundir.trackers import Trackers, scalars

ROWS: list[Row] = [
    {"step": 0, "eval_accuracy": 0.25, "eval_n": 32, "eval_s": 0.5},
    {"step": 1, "reward_mean": 0.5, "clip_frac": 0.125, "loss": None, "warnings": []},
    {"step": 2, "reward_mean": 0.75, "clip_frac": 0.0, "skipped": False, "warnings": [{"x": 1}]},
    {"step": 2, "eval_accuracy": 0.5, "eval_n": 32},
]
SAMPLES: list[Row] = [
    {"step": 1, "group": 0, "prompt": "1+2=", "completion": "3", "reward": 1.0},
    {"step": 1, "group": 0, "prompt": "1+2=", "completion": "4|x", "reward": 0.0},
]
CONFIG = {"seed": 0, "algo": {"mode": "gspo", "clip_low": 0.0003}, "train": {"steps": 2}}


def test_scalars_keep_numbers_under_their_keys() -> None:
    """`step` is the x-axis; null (non-finite), bools, lists and text are not metrics."""
    row = {"step": 3, "a": 1, "b": 0.5, "c": None, "d": True, "e": [], "f": "x", "g": 1e400}
    assert scalars(row) == {"a": 1.0, "b": 0.5}


class Recorder:
    """A tracker that records its calls; with `fail_on`, raises on that call."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on = fail_on

    def _record(self, call: str, payload: Any) -> None:
        if call == self.fail_on:
            raise OSError("disk gone")
        self.calls.append((call, payload))

    def log_config(self, config: dict[str, Any]) -> None:
        self._record("log_config", config)

    def log_row(self, step: int, values: dict[str, float]) -> None:
        self._record("log_row", (step, values))

    def log_table(self, name: str, step: int, rows: list[Row]) -> None:
        self._record("log_table", (name, step, len(rows)))

    def close(self) -> None:
        self._record("close", None)


def test_a_failing_tracker_warns_once_and_the_others_go_on() -> None:
    good, bad = Recorder(), Recorder(fail_on="log_row")
    warned: list[str] = []
    fan = Trackers([("good", lambda: good), ("bad", lambda: bad)], warned.append)
    fan.log_config(CONFIG)
    for row in ROWS:
        fan.log_row(row)
    fan.log_table("completions", 1, SAMPLES)
    fan.close()
    assert len(warned) == 1, warned
    assert "tracker bad failed (OSError: disk gone)" in warned[0]
    assert "metrics.jsonl" in warned[0], "the warning says where the record is"
    assert [c for c, _ in bad.calls] == ["log_config"], "dropped after its first failure"
    assert [c for c, _ in good.calls] == ["log_config"] + ["log_row"] * 4 + ["log_table", "close"]
    assert good.calls[2] == ("log_row", (1, {"reward_mean": 0.5, "clip_frac": 0.125}))


def test_a_tracker_that_cannot_start_is_dropped_with_a_warning() -> None:
    def broken() -> Recorder:
        raise RuntimeError("no network")

    warned: list[str] = []
    fan = Trackers([("broken", broken)], warned.append)
    fan.log_row(ROWS[1])
    fan.close()
    assert warned == [
        "tracker broken failed (RuntimeError: no network); it is dropped for the rest of the "
        "run, metrics.jsonl has every row"
    ]


def test_report_to_defaults_to_none_and_refuses_unknown_names() -> None:
    assert validate({}).train.report_to == ()
    assert validate({"train": {"report_to": ["mlflow", "tensorboard"]}}).train.report_to == (
        "mlflow",
        "tensorboard",
    )
    with pytest.raises(RecipeError, match="report_to"):
        validate({"train": {"report_to": ["comet"]}})


def test_a_tracker_that_is_not_installed_is_a_recipe_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(trackers.REQUIREMENTS, "wandb", ("gspo_no_such_module", "wandb"))
    recipe = validate({"train": {"report_to": ["wandb"]}})
    with pytest.raises(RecipeError) as caught:
        check_trackers(recipe)
    assert caught.value.problems == [
        'train.report_to: wandb is not installed; install it with pip install "gspo-cli[wandb]", '
        "or remove wandb from train.report_to"
    ]


def _feed(names: list[str], run_dir: Path) -> list[str]:
    warned: list[str] = []
    fan = Trackers.open(names, run_dir, warned.append)
    fan.log_config(CONFIG)
    for row in ROWS:
        fan.log_row(row)
    fan.log_table("completions", 1, SAMPLES)
    fan.close()
    return warned


def _expected(key: str) -> list[tuple[int, float]]:
    """(step, value) of `key` in ROWS, in order."""
    return [(r["step"], float(r[key])) for r in ROWS if isinstance(r.get(key), int | float)]


def test_tensorboard_event_files_hold_every_row(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _feed(["tensorboard"], tmp_path) == []
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    keys = {"eval_accuracy", "eval_n", "eval_s", "reward_mean", "clip_frac"}
    assert set(events.Tags()["scalars"]) == keys
    for key in keys:
        got, want = events.Scalars(key), _expected(key)
        assert [e.step for e in got] == [step for step, _ in want], key
        assert [e.value for e in got] == pytest.approx([v for _, v in want], rel=1e-6), key
    assert set(events.Tags()["tensors"]) >= {"recipe/text_summary", "completions/text_summary"}


def test_mlflow_file_store_holds_every_row_and_the_recipe(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    assert _feed(["mlflow"], tmp_path) == []
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("gspo")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"seed": "0", "algo.mode": "gspo", "algo.clip_low": "0.0003"} | {
        "train.steps": "2"
    }
    for key in ("eval_accuracy", "reward_mean", "clip_frac"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == _expected(key), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"recipe.json", "completions"}
