"""The live terminal view of a training run: a progress bar with ETA and the key metrics
(or plain log lines with --quiet)."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

if TYPE_CHECKING:
    pass

from gspo_cli.cli.base import console


class TrainView:
    """Live terminal view of a run: a progress bar with ETA and the key metrics."""

    def __init__(self, steps: int, quiet: bool) -> None:
        self.quiet = quiet
        self.steps = steps
        self.rewards: deque[float] = deque(maxlen=20)
        self.first_acc: float | None = None
        self.acc: float | None = None
        self.last: dict[str, Any] = {}
        self.log_every = max(1, steps // 20)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            disable=quiet,
        )
        self.task = self.progress.add_task("train", total=steps, metrics="")

    def on_row(self, row: dict[str, Any]) -> None:
        if "eval_accuracy" in row:
            self._on_eval(row)
        else:
            self.rewards.append(row["reward_mean"])
            self.last = row
        text, timing = self._metrics(), self._timing()
        shown = f"{text}\n{timing}" if timing else text
        self.progress.update(self.task, completed=self.last.get("step", 0), metrics=shown)
        step = row["step"]
        if self.quiet and "eval_accuracy" not in row and step % self.log_every == 0:
            console.print(f"step {step}/{self.steps}  {text}  {timing}", highlight=False)
        for warning in row.get("warnings", []):  # printed in --quiet mode too
            self.progress.console.print(
                f"[yellow]warning:[/] step {step}, {warning['code']}: {escape(warning['message'])}",
                highlight=False,
            )

    def _metrics(self) -> str:
        if not self.last:
            return ""
        reward = sum(self.rewards) / len(self.rewards)
        acc = "-" if self.acc is None else f"{self.acc:.3f}"
        row = self.last
        return (
            f"reward {reward:.3f}  acc {acc}  clip {row['clip_frac']:.3f}  "
            f"zero_std {row['zero_std_frac']:.2f}  trunc {row['truncated_frac']:.2f}"
        )

    def _timing(self) -> str:
        """Seconds per phase of the last step, and its throughput."""
        if not self.last:
            return ""
        phases = [("sample", "sample_s"), ("score", "score_s"), ("π_old", "old_logprob_s")]
        parts = [f"{name} {self.last[key]:.2f}s" for name, key in phases]
        parts.append(f"update {self.last['update_s']:.2f}s")
        return "  ".join(parts) + f"  {self.last['tokens_per_s']:.0f} tok/s"

    def _on_eval(self, row: dict[str, Any]) -> None:
        self.acc = row["eval_accuracy"]
        if self.first_acc is None:
            self.first_acc = self.acc
        change = f"  ({self.acc - self.first_acc:+.3f} since start)" if row["step"] else ""
        self.progress.console.print(
            f"step {row['step']:>5}  eval_accuracy {self.acc:.3f}{change}", highlight=False
        )
