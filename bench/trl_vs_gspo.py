"""Benchmark `gspo train` against TRL's GRPOTrainer in its documented GSPO configuration.

    python bench/trl_vs_gspo.py --steps 50 --seeds 0 1 2

Both sides start from the same model (the tiny default's warm-started checkpoint), see the
same prompts in the same order (TRL gets our seeded prompt stream as an unshuffled dataset),
and use the same settings (`SETTINGS`). One *rollout step* means the same thing on both: sample
16 prompts × 8 completions, score them, fix π_old, then 4 optimiser steps of 32 completions each.
In TRL that is `per_device_train_batch_size=32`, `gradient_accumulation_steps=1`,
`steps_per_generation=4`: one generation batch of 128 serves 4 optimiser steps, so N rollout
steps are `max_steps = 4 N` trainer steps.

Each (side, seed) runs in its own subprocess, one after the other, so peak RSS is per run and
neither side's threads compete with the other's. Seconds per step exclude model loading and
evaluation; CPU seconds are the process's user+sys time over the same intervals. Held-out
accuracy is measured by the same function (`gspo_cli.commands.evaluate.greedy_accuracy`,
256 prompts, 8 new tokens) on both sides' models before and after training. Results go to
`bench/results/<timestamp>.json`; the table is printed at the end.

The functions take the settings table as an argument (default `SETTINGS`), so
`real_model_bench.py` runs the same comparison on a real model with its own table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

Settings = Mapping[str, Any]
BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
SIDES = ("gspo", "trl")
INSTALL_HINT = "install the bench extra: pip install -e '.[bench]'"

# The one table both sides are configured from, so they cannot drift apart.
SETTINGS: dict[str, Any] = {
    "prompts_per_step": 16,
    "group_size": 8,
    "minibatches": 4,  # optimiser steps per rollout step
    "clip_low": 3e-4,
    "clip_high": 4e-4,
    "lr": 3e-5,  # constant, AdamW, no warm-up, no weight decay
    "grad_clip": 1.0,
    "max_new_tokens": 8,
    "temperature": 1.0,
    "top_p": 1.0,  # top-k off on both sides
    "eval_size": 256,
    "task": "addition",  # gspo's generated task; its test split is the held-out set
    "reward": "exact",  # a registered reward; also the checker held-out accuracy uses
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="rollout steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per side each")
    parser.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="torch.set_num_threads for both sides (default: the CPUs this process may use)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of timings")
    parser.add_argument("--out", type=Path, help="results JSON (default: timestamped)")
    # Internal: one side, one seed, in this process; the parent re-invokes itself with these.
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1 or args.warmup < 0:
        parser.error("--steps and --threads must be at least 1, --warmup at least 0")
    if args.warmup >= args.steps:
        parser.error(f"--warmup {args.warmup} leaves no timed steps out of --steps {args.steps}")
    if args.side is not None and args.json is None:
        parser.error("--side needs --json")
    return args


# --- measuring -------------------------------------------------------------------------------


class StepClock:
    """Wall and process-CPU time between marks: `start()`, then `lap()` at each step's end.

    `skip()` moves the reference point without recording (to leave evaluation out)."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self._t = (time.perf_counter(), time.process_time())

    def start(self) -> None:
        self._t = (time.perf_counter(), time.process_time())

    skip = start

    def lap(self) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self._t[0])
        self.cpu.append(now[1] - self._t[1])
        self._t = now


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def task_examples(split: str, settings: Settings = SETTINGS) -> list[Any]:
    """The `Example`s of one split of the settings' task, as `gspo train` makes them (`sums`
    with the task's default instruction, which is what the recipe gets)."""
    from gspo_cli.data import addition_examples, sums_examples
    from gspo_cli.recipe import TASK_DEFAULTS

    if settings["task"] == "sums":
        return sums_examples("test" if split == "test" else "train", TASK_DEFAULTS["sums"][2])
    return addition_examples("test" if split == "test" else "train")


def evaluate(model: Any, tokenizer: Any, settings: Settings = SETTINGS) -> float:
    """Greedy held-out accuracy, the same call for both sides."""
    from gspo_cli import rewards
    from gspo_cli.rollout.greedy import greedy_accuracy

    test = task_examples("test", settings)[: settings["eval_size"]]
    checker = rewards.get(settings["reward"])
    tokens = settings["max_new_tokens"]
    return greedy_accuracy(model, tokenizer, test, checker, max_new_tokens=tokens)


def load_start(model_dir: Path) -> tuple[Any, Any]:
    """The starting model and tokenizer in float32 on CPU, padding on the left."""
    import torch

    from gspo_cli.models.loading import load_policy

    return load_policy(str(model_dir), "float32", torch.device("cpu"), lambda _: None)


# --- our side --------------------------------------------------------------------------------


def gspo_overrides(
    steps: int, seed: int, model_dir: Path, settings: Settings = SETTINGS
) -> list[str]:
    s = settings
    return [
        f"seed={seed}",
        f"model.name={model_dir}",
        "model.dtype=float32",
        f"data.task={s['task']}",
        f"reward={s['reward']}",
        "algo.mode=gspo",
        f"rollout.prompts_per_step={s['prompts_per_step']}",
        f"rollout.group_size={s['group_size']}",
        f"rollout.max_new_tokens={s['max_new_tokens']}",
        f"rollout.temperature={s['temperature']}",
        f"rollout.top_p={s['top_p']}",
        f"algo.minibatches={s['minibatches']}",
        "algo.epochs=1",
        f"algo.clip_low={s['clip_low']}",
        f"algo.clip_high={s['clip_high']}",
        "algo.kl_beta=0",
        f"optim.lr={s['lr']}",
        "optim.warmup_steps=0",
        "optim.weight_decay=0",
        f"optim.grad_clip={s['grad_clip']}",
        # `gspo train`'s own evaluations (step 0 and the last) are not timed; a real model's
        # settings make them small, since the harness evaluates both sides itself
        f"data.eval_size={s.get('train_eval_size', s['eval_size'])}",
        f"train.steps={steps}",
        "train.eval_every=0",
        "train.save_every=0",
        "train.keep_last=1",
    ]


def run_gspo(
    steps: int,
    seed: int,
    model_dir: Path,
    settings: Settings = SETTINGS,
    start_accuracy: float | None = None,
) -> dict[str, Any]:
    """`gspo_cli.commands.train.run` in this process; per-step figures from its metrics rows.
    The start model's accuracy is measured here unless given."""
    from gspo_cli.commands import train
    from gspo_cli.recipe import load_recipe
    from gspo_cli.rundir.metrics import read_metrics

    if start_accuracy is None:
        _, start_accuracy = _start_accuracy(model_dir, settings)
    recipe = load_recipe(None, gspo_overrides(steps, seed, model_dir, settings))
    clock, cpu = StepClock(), dict[str, list[float]]()

    def on_row(row: dict[str, Any]) -> None:  # train rows end a step; eval rows are skipped
        if "step_s" in row:
            clock.lap()
        else:
            clock.skip()

    # CPU time of the rollout (sampling and π_old, then scoring) and of the updates (timing
    # only); the rollout's two stages are added up per step below
    sample, score, update = train.sample, train.score_samples, train.update
    train.sample = timed(cpu, "sample_cpu_s", sample, time.process_time)
    train.score_samples = timed(cpu, "score_cpu_s", score, time.process_time)
    train.update = timed(cpu, "update_cpu_s", update, time.process_time)
    with tempfile.TemporaryDirectory(prefix="bench-gspo-") as tmp:
        run_dir = Path(tmp)
        try:
            train.run(recipe, run_dir, on_row=on_row, announce=lambda _: None)
        finally:
            train.sample, train.score_samples, train.update = sample, score, update
        stages = zip(cpu.pop("sample_cpu_s"), cpu.pop("score_cpu_s"), strict=True)
        cpu["rollout_cpu_s"] = [a + b for a, b in stages]
        rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "step_s" in r]
        end_acc = _end_accuracy(lambda: load_start(run_dir / "final"), settings)
    return {
        "step_wall_s": [r["step_s"] for r in rows],
        "step_wall_s_clock": clock.wall,  # the same interval measured from outside, as a check
        "step_cpu_s": clock.cpu,
        "completion_tokens": [r["completion_tokens"] for r in rows],
        "reward_mean": [r["reward_mean"] for r in rows],
        "phases_s": {key: [r[key] for r in rows] for key in PHASES},
        "cpu_phases_s": cpu,
        "accuracy_start": start_accuracy,
        "accuracy_end": end_acc,
    }


def _start_accuracy(model_dir: Path, settings: Settings = SETTINGS) -> tuple[Any, float]:
    """The start model and tokenizer, and its accuracy (NaN when `settings` say not to
    evaluate)."""
    model, tokenizer = load_start(model_dir)
    return (model, tokenizer), _end_accuracy(lambda: (model, tokenizer), settings)


def _end_accuracy(load: Callable[[], tuple[Any, Any]], settings: Settings) -> float:
    if not settings.get("evaluate", True):
        return math.nan
    return evaluate(*load(), settings)


# --- TRL's side ------------------------------------------------------------------------------


def trl_config(steps: int, seed: int, output_dir: str, settings: Settings = SETTINGS) -> Any:
    """TRL's documented GSPO configuration with our settings; everything else that costs time
    or changes the algorithm (bf16 autocast, gradient checkpointing, logging services,
    checkpoints, evaluation) is turned off or aligned."""
    from trl import GRPOConfig

    s = settings
    n = s["prompts_per_step"] * s["group_size"]
    return GRPOConfig(
        output_dir=output_dir,
        # GSPO as documented in TRL's paper index
        importance_sampling_level="sequence",
        loss_type="grpo",
        beta=0.0,
        epsilon=s["clip_low"],
        epsilon_high=s["clip_high"],
        steps_per_generation=s["minibatches"],
        gradient_accumulation_steps=1,
        per_device_train_batch_size=n // s["minibatches"],  # completions per optimiser step
        num_generations=s["group_size"],
        num_iterations=1,
        scale_rewards="group",
        max_steps=steps * s["minibatches"],  # trainer steps = optimiser steps
        # sampling: the full distribution at the settings' temperature
        max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"],
        top_p=s["top_p"],
        top_k=0,
        repetition_penalty=1.0,
        shuffle_dataset=False,  # the dataset already is our seeded prompt order
        # optimiser: plain torch AdamW, like ours
        optim="adamw_torch",
        learning_rate=s["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=s["grad_clip"],
        seed=seed,
        # precision and infrastructure
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="steps",
        logging_steps=s["minibatches"],  # once per rollout step
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def trl_dataset(steps: int, seed: int, tokenizer: Any, settings: Settings = SETTINGS) -> Any:
    """The first `steps × prompts_per_step` prompts of gspo's seeded stream, as a plain-text
    `prompt` column plus the reference answer. Each prompt is rendered the way `gspo train`
    renders it (`render_prompt`: the chat template when the tokenizer has one, the text as it
    is otherwise), so TRL tokenizes exactly the text our side does."""
    import itertools

    from datasets import Dataset

    from gspo_cli.commands.bookkeeping import prompt_stream
    from gspo_cli.data import render_prompt

    train = task_examples("train", settings)
    count = steps * settings["prompts_per_step"]
    chosen = [train[i] for i in itertools.islice(prompt_stream(len(train), seed), count)]
    return Dataset.from_dict(
        {
            "prompt": [render_prompt(tokenizer, e.prompt) for e in chosen],
            "reference": [e.reference for e in chosen],
        }
    )


def exact_reward(counter: list[int], settings: Settings = SETTINGS) -> Callable[..., list[float]]:
    """The settings' reward (`exact` for the tiny default) in TRL's reward signature; appends
    each batch's token count."""
    from gspo_cli import rewards

    reward = rewards.get(settings["reward"])

    def exact_match(
        prompts: list[str],
        completions: list[str],
        completion_ids: list[list[int]],
        reference: list[str],
        **_: Any,
    ) -> list[float]:
        counter.append(sum(len(ids) for ids in completion_ids))
        return [reward(c, r) for c, r in zip(completions, reference, strict=True)]

    return exact_match


def timed(
    phases: dict[str, list[float]],
    name: str,
    fn: Callable[..., Any],
    clock: Callable[[], float] = time.perf_counter,
) -> Callable[..., Any]:
    """`fn`, recording the seconds of each call (wall by default, or by `clock`, e.g.
    `time.process_time`) under `phases[name]` (timing only)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            phases.setdefault(name, []).append(clock() - started)

    return wrapper


def laps(clock: StepClock, rewards: list[float], per_rollout: int) -> Any:
    """A Trainer callback that laps `clock` every `per_rollout` optimiser steps (one rollout
    step) and collects the logged mean reward."""
    from transformers import TrainerCallback

    class Laps(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % per_rollout == 0:
                clock.lap()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    return Laps()


# TRL's methods timed from outside (by wrapping the instance's bound methods; timing only).
TRL_TIMED = ("_generate_single_turn", "_calculate_rewards", "_generate_and_score_completions")


def run_trl(
    steps: int,
    seed: int,
    model_dir: Path,
    settings: Settings = SETTINGS,
    start_accuracy: float | None = None,
) -> dict[str, Any]:
    """TRL's GRPOTrainer in this process; a callback laps the clock every `minibatches`
    optimiser steps. The start model's accuracy is measured here unless given."""
    from trl import GRPOTrainer

    model, tokenizer = load_start(model_dir)
    if start_accuracy is None:
        start_accuracy = _end_accuracy(lambda: (model, tokenizer), settings)
    clock, tokens, rewards = StepClock(), list[int](), list[float]()
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=exact_reward(tokens, settings),
            args=trl_config(steps, seed, tmp, settings),
            train_dataset=trl_dataset(steps, seed, tokenizer, settings),
            processing_class=tokenizer,
            callbacks=[laps(clock, rewards, settings["minibatches"])],
        )
        phases: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        for name in TRL_TIMED:
            setattr(trainer, name, timed(phases, name, getattr(trainer, name)))
        rollout = trainer._generate_and_score_completions
        trainer._generate_and_score_completions = timed(
            cpu, "rollout_cpu_s", rollout, time.process_time
        )
        trainer.train()
        trained = trainer.accelerator.unwrap_model(trainer.model)
        end_acc = _end_accuracy(lambda: (trained, tokenizer), settings)
    return {
        "step_wall_s": clock.wall,
        "step_cpu_s": clock.cpu,
        "completion_tokens": tokens,
        "reward_mean": rewards,
        "phases_s": {
            "sample_s": phases.get("_generate_single_turn", []),
            "score_s": phases.get("_calculate_rewards", []),
            # generate_and_score covers sampling, scoring and π_old log-probs
            "rollout_s": phases.get("_generate_and_score_completions", []),
        },
        "cpu_phases_s": cpu,
        "accuracy_start": start_accuracy,
        "accuracy_end": end_acc,
    }


def versions() -> dict[str, str]:
    import torch
    import transformers

    found = {"python": platform.python_version(), "torch": torch.__version__}
    found["transformers"] = transformers.__version__
    if importlib.util.find_spec("trl") is not None:
        import trl

        found["trl"] = trl.__version__
    return found


def run_child(
    args: argparse.Namespace,
    model_dir: Path | None = None,
    settings: Settings = SETTINGS,
    start_accuracy: float | None = None,
) -> int:
    """One side, one seed, in this process; writes its record to `args.json`. The model is
    the tiny default unless `model_dir` is given."""
    import torch

    from gspo_cli.models.tiny import ensure_tiny_model

    torch.set_num_threads(args.threads)
    model_dir = model_dir or ensure_tiny_model(print)
    side_fn = run_gspo if args.side == "gspo" else run_trl
    started = time.perf_counter()
    record = side_fn(args.steps, args.seed, model_dir, settings, start_accuracy)
    record |= {
        "side": args.side,
        "seed": args.seed,
        "steps": args.steps,
        "threads": args.threads,
        "threads_after": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
        "total_s": time.perf_counter() - started,
    }
    args.json.write_text(json.dumps(record), encoding="utf-8")
    return 0


# --- the parent: run everything, summarise, print --------------------------------------------


def spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the deviation is 0 for a single value."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


PHASES = ("sample_s", "score_s", "old_logprob_s", "update_s")


def phase_means(record: dict[str, Any], warmup: int) -> dict[str, float]:
    """Mean wall seconds per timed step in each phase. TRL's trainer is timed from outside:
    its π_old phase is generate-and-score minus sampling and scoring (so it includes TRL's
    bookkeeping), and its update phase is the rest of the step."""
    phases = {key: values[warmup:] for key, values in record["phases_s"].items()}
    if "rollout_s" in phases:  # TRL
        wall = record["step_wall_s"][warmup:]
        rollout = phases.pop("rollout_s")
        sampled = zip(rollout, phases["sample_s"], phases["score_s"], strict=True)
        phases["old_logprob_s"] = [r - a - b for r, a, b in sampled]
        phases["update_s"] = [w - r for w, r in zip(wall, rollout, strict=True)]
    return {key: statistics.fmean(phases[key]) for key in PHASES}


def run_figures(record: dict[str, Any], warmup: int) -> dict[str, float]:
    """One run's per-step means over the timed steps (the first `warmup` left out)."""
    wall = record["step_wall_s"][warmup:]
    cpu = record["step_cpu_s"][warmup:]
    tokens = record["completion_tokens"][warmup:]
    return (
        {
            "step_s": statistics.fmean(wall),
            "cpu_s": statistics.fmean(cpu),
            "tokens_per_s": sum(tokens) / sum(wall),
            "tokens_per_cpu_s": sum(tokens) / sum(cpu),
            "tokens_per_step": statistics.fmean(tokens),
            "peak_rss_mb": record["peak_rss_mb"],
            "accuracy_start": record["accuracy_start"],
            "accuracy_end": record["accuracy_end"],
        }
        | phase_means(record, warmup)
        | cpu_split(record, warmup)
    )


def cpu_split(record: dict[str, Any], warmup: int) -> dict[str, float]:
    """Mean CPU seconds per timed step of the rollout (sampling, scoring, π_old: `collect` on
    our side, `_generate_and_score_completions` on TRL's) and of the rest of the step (the
    updates and each side's bookkeeping); empty for records without CPU phases."""
    rollout = record.get("cpu_phases_s", {}).get("rollout_cpu_s", [])[warmup:]
    cpu = record["step_cpu_s"][warmup:]
    if len(rollout) != len(cpu) or not cpu:
        return {}
    return {
        "rollout_cpu_s": statistics.fmean(rollout),
        "update_cpu_s": statistics.fmean(c - r for c, r in zip(cpu, rollout, strict=True)),
    }


def summarize(records: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Per side: mean and spread over seeds of each figure. Per seed (the two sides' runs of
    one seed are adjacent in time) and then over seeds: gspo's speed over TRL's, as steps per
    second (wall and CPU) and completion tokens per second, and gspo's accuracy minus TRL's."""
    figures = {(r["side"], r["seed"]): run_figures(r, warmup) for r in records}
    sides: dict[str, dict[str, tuple[float, float]]] = {}
    for side in SIDES:
        runs = [f for (s, _), f in sorted(figures.items()) if s == side]
        if runs:
            sides[side] = {key: spread([f[key] for f in runs]) for key in runs[0]}
    seeds = sorted({seed for (_, seed) in figures})
    ratios_by_seed = {}
    for seed in seeds:
        if ("gspo", seed) not in figures or ("trl", seed) not in figures:
            continue
        ours, theirs = figures[("gspo", seed)], figures[("trl", seed)]
        ratios_by_seed[seed] = {
            "wall": theirs["step_s"] / ours["step_s"],
            "cpu": theirs["cpu_s"] / ours["cpu_s"],
            "tokens_per_s": ours["tokens_per_s"] / theirs["tokens_per_s"],
            "tokens_per_cpu_s": ours["tokens_per_cpu_s"] / theirs["tokens_per_cpu_s"],
            "accuracy_end_diff": ours["accuracy_end"] - theirs["accuracy_end"],
        }
    ratios = {}
    if ratios_by_seed:
        keys = next(iter(ratios_by_seed.values()))
        ratios = {key: spread([r[key] for r in ratios_by_seed.values()]) for key in keys}
    return {"sides": sides, "ratios_by_seed": ratios_by_seed, "ratios": ratios, "seeds": seeds}


def _pm(pair: tuple[float, float], fmt: str) -> str:
    mean, dev = pair
    return f"{mean:{fmt}} ± {dev:{fmt.lstrip('+')}}"


def _label(side: str) -> str:
    return "gspo train" if side == "gspo" else "TRL GRPOTrainer"


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The main table as text cells: a header, one row per side, one ratio row."""
    rows = [
        ["", "s / rollout step", "CPU s / step", "completion tok/s", "peak RSS MB", "held-out acc"]
    ]
    for side, f in summary["sides"].items():
        rows.append(
            [
                _label(side),
                _pm(f["step_s"], ".3f"),
                _pm(f["cpu_s"], ".3f"),
                _pm(f["tokens_per_s"], ".0f"),
                _pm(f["peak_rss_mb"], ".0f"),
                f"{f['accuracy_start'][0]:.3f} → {_pm(f['accuracy_end'], '.3f')}",
            ]
        )
    r = summary["ratios"]
    if r:
        rows.append(
            [
                "gspo ÷ TRL (speed)",
                f"{_pm(r['wall'], '.2f')}×",
                f"{_pm(r['cpu'], '.2f')}×",
                f"{_pm(r['tokens_per_s'], '.2f')}×",
                "",
                f"Δ {_pm(r['accuracy_end_diff'], '+.3f')}",
            ]
        )
    return rows


def phase_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Where a rollout step's wall time goes, per side."""
    rows = [["", "sample", "score", "π_old log-probs", "4 updates"]]
    for side, f in summary["sides"].items():
        rows.append([_label(side), *(_pm(f[key], ".3f") for key in PHASES)])
    return rows


def print_table(rows: list[list[str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    header, *body = rows
    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in body:
        table.add_row(*row)
    Console(width=200).print(table)


def markdown_table(rows: list[list[str]]) -> str:
    """Text cells as a Markdown table, for the README."""
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs: shared cores and busy-waiting
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    src = str(BENCH_DIR.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def run_one(side: str, seed: int, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Re-invoke this script for one side and seed; its output goes to a log file."""
    out = logs / f"{side}-seed{seed}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--seed", str(seed)]
    command += ["--steps", str(args.steps), "--threads", str(args.threads), "--json", str(out)]
    started = time.perf_counter()
    with (logs / f"{side}-seed{seed}.log").open("w", encoding="utf-8") as log:
        code = subprocess.run(command, env=child_env(), stdout=log, stderr=log).returncode
    if code != 0:
        raise SystemExit(f"{side} seed {seed} failed (exit {code}); see {log.name} in {logs}")
    print(f"  {side:4} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    return dict(json.loads(out.read_text(encoding="utf-8")))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("trl") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    if args.side is not None:
        return run_child(args)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS_DIR / f"{stamp}.json"
    logs = out.with_suffix("").with_name(out.stem + "-logs")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{args.steps} rollout steps × seeds {args.seeds}, {args.threads} threads; logs: {logs}")
    records = []
    for i, seed in enumerate(args.seeds):  # alternate which side goes first, against drift
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            records.append(run_one(side, seed, args, logs))
    summary = summarize(records, args.warmup)
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "settings": SETTINGS,
        "machine": machine(),
        "versions": versions(),
        "summary": summary,
        "runs": records,
    }
    out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    title = f"{args.steps} rollout steps, seeds {args.seeds}, mean ± std over seeds"
    print_table(table_rows(summary), title)
    print_table(phase_rows(summary), "wall seconds per rollout step, by phase")
    print(markdown_table(table_rows(summary)), markdown_table(phase_rows(summary)), sep="\n\n")
    print(f"results: {out}")
    return 0


def machine() -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "nproc": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "omp_wait_policy": child_env()["OMP_WAIT_POLICY"],
    }


if __name__ == "__main__":
    sys.exit(main())
