"""End to end: `gspo train` with `train.report_to` on the tiny default; each tracker's own
store, read back, holds what metrics.jsonl holds, and a tracker that breaks mid-run does not
stop training."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gspo_cli.recipe import load_recipe, validate
from gspo_cli.rundir import trackers
from gspo_cli.rundir.metrics import read_metrics
from gspo_cli.rundir.trackers import TensorBoardTracker

from cli_runs import SMALL, cli_args, cli_env
from refusals import assert_refused

INSTALLED = [
    n for n, (module, _) in trackers.REQUIREMENTS.items() if importlib.util.find_spec(module)
]


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["step"], float(r[key])) for r in rows if isinstance(r.get(key), int | float)]


@pytest.mark.slow
def test_a_run_reports_every_row_to_every_installed_tracker(
    warm_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not {"tensorboard", "mlflow"} <= set(INSTALLED):
        pytest.skip("needs tensorboard and mlflow-skinny (the dev extra)")
    out = tmp_path / "run"
    names = ",".join(INSTALLED)
    sets = (*SMALL, f"train.report_to=[{names}]")
    env = {**cli_env(), "WANDB_MODE": "offline", "TRACKIO_DIR": str(tmp_path / "trackio")}
    result = subprocess.run(
        cli_args("train", "--quiet", "--out", str(out), sets=sets),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    rows = read_metrics(out / "metrics.jsonl")
    keys = {k for r in rows for k in trackers.scalars(r)}
    assert {"reward_mean", "clip_frac", "eval_accuracy"} <= keys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == keys
    for key in keys:
        got, want = events.Scalars(key), _series(rows, key)
        assert [e.step for e in got] == [step for step, _ in want], key
        assert [e.value for e in got] == pytest.approx([v for _, v in want], rel=1e-6), key

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as MlflowTracker sets it
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("gspo").experiment_id])
    assert run.data.params["algo.mode"] == "gspo" and run.data.params["train.steps"] == "3"
    for key in keys:
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == _series(rows, key), key
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "completions")}
    assert logged == {f"completions/step_{s:06d}.json" for s in (1, 2, 3)}

    if "wandb" in INSTALLED:  # offline: the config and rows live in the run's .wandb file
        (record,) = (out / "wandb").glob("**/offline-run-*/run-*.wandb")
        assert b"clip_low" in record.read_bytes(), "the resolved recipe is the run's config"
        tables = list(record.parent.glob("files/media/table/completions_*.table.json"))
        assert len(tables) == 3, "one completions table per step"
    if "trackio" in INSTALLED:
        _check_trackio(tmp_path / "trackio" / "gspo.db", out.name, rows)
    assert (out / "summary.png").is_file() and "plots" in result.stdout, "train names its plots"
    resolved = load_recipe(out / "recipe.yaml").model_dump(mode="json")
    assert resolved["train"]["report_to"] == INSTALLED


def _check_trackio(db: Path, run_name: str, rows: list[dict[str, Any]]) -> None:
    """trackio's local store: the run's config is the resolved recipe, and its eval rows are
    metrics.jsonl's."""
    with sqlite3.connect(db) as store:
        (config,) = store.execute("select config from configs where run_name = ?", (run_name,))
        logged = store.execute(
            "select step, metrics from metrics where run_name = ? order by id", (run_name,)
        ).fetchall()
    assert json.loads(config[0])["algo"]["mode"] == "gspo"
    evals = [(step, json.loads(m)["eval_accuracy"]) for step, m in logged if b"eval_acc" in m]
    assert evals == _series(rows, "eval_accuracy")


class Flaky(TensorBoardTracker):
    """TensorBoard until the second training step, then a full disk."""

    def log_row(self, step: int, values: dict[str, float]) -> None:
        if step == 2:
            raise OSError(28, "No space left on device")
        super().log_row(step, values)


@pytest.mark.slow
def test_a_tracker_failing_mid_run_warns_once_and_training_finishes(
    warm_tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    from gspo_cli.commands import train as trainer

    monkeypatch.setitem(trackers.FACTORIES, "tensorboard", Flaky)
    raw: dict[str, Any] = {}
    for assignment in (*SMALL, "train.report_to=[tensorboard]"):
        key, value = assignment.split("=")
        section, leaf = key.split(".")
        raw.setdefault(section, {})[leaf] = json.loads(
            value.replace("[tensorboard]", '["tensorboard"]')
        )
    said: list[str] = []
    out = tmp_path / "run"
    out.mkdir()
    trainer.run(validate(raw), out, announce=said.append)
    warned = [s for s in said if "tracker" in s]
    assert warned == [
        "warning: tracker tensorboard failed (OSError: [Errno 28] No space left on device); it is "
        "dropped for the rest of the run, metrics.jsonl has every row"
    ]
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward_mean" in r] == [1, 2, 3]
    assert (out / "final").exists()


def test_train_naming_a_tracker_that_is_not_installed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 2 with the pip line, before any model loads and with nothing written."""
    monkeypatch.setitem(trackers.REQUIREMENTS, "trackio", ("gspo_no_such_module", "trackio"))
    monkeypatch.chdir(tmp_path)
    assert_refused(
        ["train", "--set", "train.report_to=[trackio]"],
        tmp_path,
        code=2,
        fragment='install it with pip install "gspo-cli[trackio]"',
    )
