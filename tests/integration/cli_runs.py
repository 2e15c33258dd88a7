"""Helpers for tests that run the real `gspo` CLI in a subprocess on the tiny default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gspo_cli.recipe import Recipe

# A few quick steps: 4 prompts × 4 completions, 2 minibatches.
SMALL = (
    "train.steps=3",
    "train.eval_every=2",
    "train.save_every=2",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "algo.minibatches=2",
    "data.eval_size=32",
    "optim.lr=1e-3",
)

TIMING_KEYS = {
    "sample_s",
    "score_s",
    "old_logprob_s",
    "update_s",
    "rollout_s",
    "step_s",
    "tokens_per_s",
    "eval_s",
}


DUMP_WORKER = Path(__file__).with_name("dump_worker.py")


def cli_args(*args: str, sets: tuple[str, ...] = (), dump: Path | None = None) -> list[str]:
    """The command line of `gspo ARGS --set ...`; with `dump`, through `dump_worker.py`,
    which saves each rank's final weights and sampled prompts there."""
    start = ["-m", "gspo_cli"] if dump is None else [str(DUMP_WORKER), str(dump)]
    command = [sys.executable, *start, *args]
    for s in sets:
        command += ["--set", s]
    return command


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}


def run_cli(
    *args: str, sets: tuple[str, ...] = (), dump: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`gspo ARGS --set ...` in a subprocess; returns the finished process. With `dump`, the
    run goes through `dump_worker.py`, which saves what the distributed tests compare there."""
    return subprocess.run(
        cli_args(*args, sets=sets, dump=dump),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
        check=False,
    )


def train(out: Path, *sets: str, dump: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`gspo train --quiet --out OUT --set ...`."""
    return run_cli("train", "--quiet", "--out", str(out), sets=sets, dump=dump)


def torchrun(
    nproc: int, *args: str, sets: tuple[str, ...] = (), dump: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node N -m gspo_cli ARGS --set ...` on CPU (gloo),
    one thread per process; with `dump`, every rank saves its dump there (`dump_worker.py`)."""
    env = {**cli_env(), "OMP_NUM_THREADS": "1"}
    target = cli_args(*args, sets=sets, dump=dump)[1:]  # -m gspo_cli ARGS, or the worker's
    return run_torchrun(nproc, target, env)


def run_torchrun(
    nproc: int, target: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """torchrun TARGET; a run past `timeout` gets SIGTERM, on which torchrun stops its
    workers, so a hang fails the test without leaving processes behind."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        *target,
    ]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
        try:
            proc.wait(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=60)
            hung = True
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if hung:
        raise AssertionError(f"torchrun ran over {timeout} s: {(stdout + stderr)[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def without_timing(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Rows with wall-clock keys removed, for comparing runs."""
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def write_fake_run(recipe: Recipe, run_dir: Path, upto: int, start: int = 0) -> None:
    """What train.run leaves behind: recipe.yaml, metrics rows in the documented schema, a
    complete checkpoint at `upto` and, when finished, final/."""
    (run_dir / "recipe.yaml").write_text(recipe.to_yaml())
    clip = 0.2 if recipe.algo.mode == "gspo" else 0.002
    rows = [] if start else [{"step": 0, "eval_accuracy": 0.25, "eval_n": 4, "eval_s": 0.1}]
    for step in range(start + 1, upto + 1):
        rows.append(
            {
                "step": step,
                "reward_mean": 0.5,
                "clip_frac": clip,
                "ratio_mean": 1.0,
                "step_s": 1.0,
                "tokens_per_s": 50.0,
            }
        )
    accuracy = 0.5 + recipe.seed / 10 + (0.1 if recipe.algo.mode == "gspo" else 0.0)
    rows.append({"step": upto, "eval_accuracy": accuracy, "eval_n": 4})
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    checkpoint = run_dir / "checkpoints" / f"step_{upto:06d}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "manifest.json").write_text(json.dumps({"step": upto, "files": []}))
    if upto == recipe.train.steps:
        (run_dir / "final").mkdir()
