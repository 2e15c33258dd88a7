"""Experiment trackers (`train.report_to`): every metrics.jsonl row, the resolved recipe and the
completions samples, sent on to TensorBoard, Weights & Biases, MLflow or trackio.

Each tracker is one small class behind the same four calls (`Tracker`), its library imported
only when the run starts, and every one of them offline: TensorBoard event files and MLflow's
file store inside the run directory, W&B in offline mode with its files there too, trackio in
its own local store (`$TRACKIO_DIR`, default ~/.cache/huggingface/trackio) without a dashboard.
`Trackers` fans the calls out; a tracker that raises is warned about once and dropped, and
training goes on: metrics.jsonl stays the record. Only rank 0 makes one (`RunBook`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from gspo_cli.rundir.metrics import Row
from gspo_cli.rundir.paths import MLFLOW_DIR, TENSORBOARD_DIR, WANDB_DIR

PROJECT = "gspo"  # the W&B project, MLflow experiment and trackio project

# name → (module that must be importable, the package extra that installs it)
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "trackio": ("trackio", "trackio"),
}


def missing(names: Sequence[str]) -> list[str]:
    """One line per named tracker whose library is not installed, with its install line.
    Looks the modules up without importing them."""
    lines = []
    for name in names:
        module, extra = REQUIREMENTS[name]
        if importlib.util.find_spec(module) is None:
            lines.append(
                f"train.report_to: {name} is not installed; install it with "
                f'pip install "gspo-cli[{extra}]", or remove {name} from train.report_to'
            )
    return lines


def scalars(row: Row) -> dict[str, float]:
    """The row's numbers under their metrics.jsonl keys: `step` is the x-axis, not a metric;
    lists (warnings), text and null (a non-finite value) are left out."""
    out = {}
    for key, value in row.items():
        if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker(Protocol):
    def log_config(self, config: dict[str, Any]) -> None: ...
    def log_row(self, step: int, values: dict[str, float]) -> None: ...
    def log_table(self, name: str, step: int, rows: list[Row]) -> None: ...
    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files in RUN/tensorboard; the recipe and completions as text (markdown)."""

    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def log_config(self, config: dict[str, Any]) -> None:
        text = json.dumps(config, indent=2)
        self.writer.add_text("recipe", "    " + text.replace("\n", "\n    "), 0)

    def log_row(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_table(self, name: str, step: int, rows: list[Row]) -> None:
        self.writer.add_text(name, _markdown(rows), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """An offline W&B run in RUN/wandb (`wandb sync` uploads it later)."""

    def __init__(self, run_dir: Path) -> None:
        import wandb

        (run_dir / WANDB_DIR).mkdir(exist_ok=True)
        self.wandb = wandb
        # console off: wandb would otherwise wrap stdout under the live view; no system stats
        settings = wandb.Settings(console="off", x_disable_stats=True, silent=True)
        self.run = wandb.init(
            project=PROJECT,
            name=run_dir.name,
            dir=str(run_dir / WANDB_DIR),
            mode="offline",
            settings=settings,
        )

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_row(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_table(self, name: str, step: int, rows: list[Row]) -> None:
        columns = list(rows[0])
        table = self.wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
        self.run.log({name: table}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in the local file store RUN/mlruns (`mlflow ui --backend-store-uri`)."""

    def __init__(self, run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        # MLflow 3.x keeps the file store in "maintenance mode" and refuses it unless this is
        # set; its database store needs SQLAlchemy, which mlflow-skinny does not bring.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

        self.client = MlflowClient(tracking_uri=(run_dir / MLFLOW_DIR).resolve().as_uri())
        found = self.client.get_experiment_by_name(PROJECT)
        experiment = found.experiment_id if found else self.client.create_experiment(PROJECT)
        self.run_id = self.client.create_run(experiment, run_name=run_dir.name).info.run_id

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in _flatten(config).items()]
        self.client.log_batch(self.run_id, params=params)
        self.client.log_dict(self.run_id, config, "recipe.json")

    def log_row(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_table(self, name: str, step: int, rows: list[Row]) -> None:
        self.client.log_dict(self.run_id, {"rows": rows}, f"{name}/step_{step:06d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class TrackioTracker:
    """A trackio run in its local store, with no dashboard, browser or system sampling."""

    def __init__(self, run_dir: Path) -> None:
        import trackio

        self.trackio = trackio
        self.name = run_dir.name
        with contextlib.redirect_stdout(io.StringIO()):  # its banner would break the view
            self.run = trackio.init(
                project=PROJECT,
                name=self.name,
                embed=False,
                auto_log_cpu=False,
                auto_log_gpu=False,
            )

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config)

    def log_row(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def log_table(self, name: str, step: int, rows: list[Row]) -> None:
        import pandas as pd

        self.run.log({name: self.trackio.Table(dataframe=pd.DataFrame(rows))}, step=step)

    def close(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            self.run.finish()


FACTORIES: dict[str, Callable[[Path], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MlflowTracker,
    "trackio": TrackioTracker,
}


class Trackers:
    """The run's trackers as one: each call goes to every tracker still alive; one that
    raises is named once through `warn` and dropped, and the run goes on."""

    def __init__(
        self,
        named: Sequence[tuple[str, Callable[[], Tracker]]],
        warn: Callable[[str], None],
    ) -> None:
        self.warn = warn
        self.live: dict[str, Tracker] = {}
        for name, make in named:
            self._guard(name, self._start, name, make)

    @classmethod
    def open(cls, names: Sequence[str], run_dir: Path, warn: Callable[[str], None]) -> Trackers:
        """The named trackers, writing into (or for) `run_dir`."""
        factories = [(n, functools.partial(FACTORIES[n], run_dir)) for n in names]
        return cls(factories, warn)

    def _start(self, name: str, make: Callable[[], Tracker]) -> None:
        self.live[name] = make()

    def _guard(self, name: str, call: Callable[..., object], *args: Any) -> None:
        try:
            call(*args)
        except Exception as exc:  # a tracker must never stop training
            self.live.pop(name, None)
            self.warn(
                f"tracker {name} failed ({type(exc).__name__}: {exc}); it is dropped for the "
                "rest of the run, metrics.jsonl has every row"
            )

    def log_config(self, config: dict[str, Any]) -> None:
        for name, tracker in list(self.live.items()):
            self._guard(name, tracker.log_config, config)

    def log_row(self, row: Row) -> None:
        values, step = scalars(row), int(row["step"])
        for name, tracker in list(self.live.items()):
            self._guard(name, tracker.log_row, step, values)

    def log_table(self, name: str, step: int, rows: list[Row]) -> None:
        if not rows:
            return
        for tracker_name, tracker in list(self.live.items()):
            self._guard(tracker_name, tracker.log_table, name, step, rows)

    def close(self) -> None:
        for name, tracker in list(self.live.items()):
            self._guard(name, tracker.close)
        self.live.clear()


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'algo': {'mode': 'gspo'}} → {'algo.mode': 'gspo'}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _markdown(rows: list[Row]) -> str:
    """Rows as a markdown table (TensorBoard's text plugin renders it)."""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = (str(row[c]).replace("|", "\\|").replace("\n", " ") for c in columns)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
