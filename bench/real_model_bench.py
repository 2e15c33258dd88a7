"""TRL's GRPOTrainer (GSPO) against `gspo train` on a real model: SmolLM2-135M-Instruct.

    python ../shared/models/make_smollm2.py /tmp/models/smollm2      # once, about 25 s
    python bench/real_model_bench.py --model-dir /tmp/models/smollm2 --steps 6 --threads 1
    python bench/real_model_bench.py --model-dir /tmp/models/smollm2 --sweep --threads 1

The side-by-side mode is `trl_vs_gspo.py`'s comparison (the same harness, run functions,
figures and tables, imported from it) on the pretrained chat model and the `sums` task: both
sides start from the same model directory, see the same prompts in the same order, rendered by
the same chat template (`render_prompt`), with the same settings (`real_settings`: by default
4 prompts × 8 completions, 4 minibatches, temperature 0.7, 64 new tokens, AdamW at 5e-6,
reward `gsm8k_flexible`). Held-out greedy accuracy on the 128 `sums` test questions is
measured by the same function (`greedy_accuracy`, as many new tokens as in training) for the
start model once, in its own process, and for each side's model after training.

The sweep mode (`--sweep`) times rollout steps against completion length and group size. A
pretrained model stops early, so a length could not be set; instead both sides run a model of
the same shape with random weights (built from the model's config.json into a temporary
directory), which almost never samples EOS and so generates `max_new_tokens` on every row; the
table shows the completion tokens each side really generated per step. Each (length, group,
side) is its own process: `--warmup` untimed steps, then `--sweep-steps` timed ones, on
`--sweep-prompts` prompts per step, no evaluation.

CPU seconds (the process's user + sys time) are the figure to compare on a shared machine;
wall seconds are reported beside them. Results go to `bench/results/<timestamp>.json` (and
`-sweep.json`); the tables are printed in Markdown at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:  # run as a script this is already so; imported, it is not
    sys.path.insert(0, str(BENCH_DIR))

import trl_vs_gspo as base  # noqa: E402  (the shared harness, next to this file)

MODELS = ("smollm2",)
TASKS = ("sums",)
CHILD_SIDES = (*base.SIDES, "start")  # "start": evaluate the start model only
SHARED_MODELS = BENCH_DIR.parent.parent / "shared" / "models"

# Defaults for the real model, over the tiny comparison's SETTINGS; the command line may change
# the ones `real_settings` names, and children get the resulting table verbatim.
REAL_SETTINGS: dict[str, Any] = base.SETTINGS | {
    "prompts_per_step": 4,
    "group_size": 8,
    "lr": 5e-6,
    "max_new_tokens": 64,
    "temperature": 0.7,
    "eval_size": 128,  # the whole held-out split of `sums`
    "task": "sums",
    "reward": "gsm8k_flexible",
    "train_eval_size": 1,  # `gspo train`'s own untimed evaluations; the harness evaluates
    "evaluate": True,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="smollm2", help="the real model")
    parser.add_argument("--model-dir", type=Path, help="its Hugging Face directory")
    parser.add_argument("--task", choices=TASKS, default="sums")
    parser.add_argument("--steps", type=int, default=6, help="rollout steps per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per side each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of timings")
    parser.add_argument("--max-new-tokens", type=int, default=REAL_SETTINGS["max_new_tokens"])
    parser.add_argument("--prompts", type=int, default=REAL_SETTINGS["prompts_per_step"])
    parser.add_argument("--group", type=int, default=REAL_SETTINGS["group_size"])
    parser.add_argument("--temperature", type=float, default=REAL_SETTINGS["temperature"])
    parser.add_argument("--lr", type=float, default=REAL_SETTINGS["lr"])
    parser.add_argument(
        "--eval-size", type=int, default=REAL_SETTINGS["eval_size"], help="held-out questions"
    )
    parser.add_argument("--out", type=Path, help="results JSON (default: timestamped)")
    sweep = parser.add_argument_group("sweep (seconds per step against length and group size)")
    sweep.add_argument("--sweep", action="store_true", help="run the sweep instead")
    sweep.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256])
    sweep.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    sweep.add_argument("--full-grid", action="store_true", help="every length × every group")
    sweep.add_argument("--sweep-prompts", type=int, default=2, help="prompts per rollout step")
    sweep.add_argument("--sweep-steps", type=int, default=2, help="timed steps after warm-up")
    # Internal: one side in this process; the parent re-invokes itself with these.
    parser.add_argument("--side", choices=CHILD_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)  # the table, as JSON
    parser.add_argument("--start-accuracy", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    problem = argument_problem(args)
    if problem:
        parser.error(problem)
    return args


def argument_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    positive = {"--steps": args.steps, "--threads": args.threads, "--prompts": args.prompts}
    positive |= {"--max-new-tokens": args.max_new_tokens, "--sweep-steps": args.sweep_steps}
    positive |= {"--sweep-prompts": args.sweep_prompts, "--eval-size": args.eval_size}
    for flag, value in positive.items():
        if value < 1:
            return f"{flag} must be at least 1, got {value}"
    if args.warmup < 0 or (not args.sweep and args.warmup >= args.steps):
        return f"--warmup {args.warmup} must be at least 0 and leave timed steps of --steps"
    if args.temperature <= 0 or args.lr <= 0:
        return "--temperature and --lr must be positive"
    if min(args.lengths) < 1 or min([args.group, *args.groups]) < 2:
        return "--lengths must be at least 1, --group and --groups at least 2"
    minibatches = REAL_SETTINGS["minibatches"]
    batches = [args.prompts * args.group]
    batches += [args.sweep_prompts * g for g in args.groups] if args.sweep else []
    for n in batches:
        if n % minibatches:
            return f"{n} completions per step do not split into {minibatches} minibatches"
    if args.side is not None and (args.json is None or args.settings is None):
        return "--side needs --json and --settings"
    if args.model_dir is None or not (args.model_dir / "config.json").is_file():
        return (
            f"--model-dir {args.model_dir}: not a model directory; build one with "
            "python ../shared/models/make_smollm2.py DIR"
        )
    return None


def real_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The one table both sides of the side-by-side are configured from."""
    return REAL_SETTINGS | {
        "task": args.task,
        "prompts_per_step": args.prompts,
        "group_size": args.group,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "lr": args.lr,
        "eval_size": args.eval_size,
    }


def sweep_settings(
    settings: dict[str, Any], length: int, group: int, prompts: int
) -> dict[str, Any]:
    """One sweep configuration: the side-by-side's table at another length and group size,
    fewer prompts, no evaluation."""
    return settings | {
        "max_new_tokens": length,
        "group_size": group,
        "prompts_per_step": prompts,
        "evaluate": False,
    }


def sweep_configs(
    lengths: Sequence[int], groups: Sequence[int], full: bool
) -> list[tuple[int, int]]:
    """(length, group) pairs to time: every pair with `full`; otherwise every length at the
    middle group size, then every other group size at the shortest length.

    >>> sweep_configs([32, 64], [4, 8, 16], full=False)
    [(32, 8), (64, 8), (32, 4), (32, 16)]
    """
    lengths, groups = sorted(set(lengths)), sorted(set(groups))
    if full:
        return [(length, group) for length in lengths for group in groups]
    pivot = groups[len(groups) // 2]
    return [(length, pivot) for length in lengths] + [
        (lengths[0], group) for group in groups if group != pivot
    ]


# --- children --------------------------------------------------------------------------------


def run_start(args: argparse.Namespace, settings: dict[str, Any]) -> int:
    """Evaluate the start model (once, for both sides); write its record to `args.json`."""
    import torch

    torch.set_num_threads(args.threads)
    cpu = time.process_time()
    model, tokenizer = base.load_start(args.model_dir)
    accuracy = base.evaluate(model, tokenizer, settings)
    record = {"accuracy_start": accuracy, "cpu_s": time.process_time() - cpu}
    record["peak_rss_mb"] = base.peak_rss_mb()
    args.json.write_text(json.dumps(record), encoding="utf-8")
    return 0


def random_twin(model_dir: Path, out: Path, seed: int = 0) -> Path:
    """A model of `model_dir`'s shape (its config.json) with random weights, and its tokenizer,
    saved to `out`: it rarely samples EOS, so completions run to `max_new_tokens`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(model_dir)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


# --- the parent ------------------------------------------------------------------------------


def spawn(
    side: str, seed: int, steps: int, model_dir: Path, settings: dict[str, Any], args: Any
) -> dict[str, Any]:
    """Re-invoke this script for one side (or the start evaluation); output to a log file."""
    tag = f"{side}-seed{seed}-L{settings['max_new_tokens']}-G{settings['group_size']}"
    out = args.logs / f"{tag}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--seed", str(seed)]
    command += ["--steps", str(steps), "--threads", str(args.threads), "--json", str(out)]
    command += ["--warmup", "0", "--model-dir", str(model_dir), "--settings", json.dumps(settings)]
    if args.start_accuracy is not None:
        command += ["--start-accuracy", repr(args.start_accuracy)]
    started = time.perf_counter()
    with (args.logs / f"{tag}.log").open("w", encoding="utf-8") as log:
        code = subprocess.run(command, env=base.child_env(), stdout=log, stderr=log).returncode
    if code != 0:
        raise SystemExit(f"{tag} failed (exit {code}); see {args.logs / (tag + '.log')}")
    print(f"  {tag}: {time.perf_counter() - started:.0f} s wall", flush=True)
    return dict(json.loads(out.read_text(encoding="utf-8")))


def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    """The start evaluation, then each seed's two runs (which side goes first alternates)."""
    settings = real_settings(args)
    start = spawn("start", 0, 1, args.model_dir, settings, args)
    args.start_accuracy = start["accuracy_start"]
    print(f"  start model: held-out accuracy {args.start_accuracy:.3f}", flush=True)
    records = []
    for i, seed in enumerate(args.seeds):
        for side in base.SIDES if i % 2 == 0 else base.SIDES[::-1]:
            records.append(spawn(side, seed, args.steps, args.model_dir, settings, args))
    summary = base.summarize(records, args.warmup)
    tables = {
        "main": real_table_rows(summary),
        "cpu_phases": cpu_phase_rows(summary),
        "wall_phases": base.phase_rows(summary),
    }
    return {"settings": settings, "start": start, "summary": summary, "runs": records} | {
        "tables": tables
    }


def sweep(args: argparse.Namespace) -> dict[str, Any]:
    """Every (length, group) configuration, each side in its own process, on a random twin of
    the model; per configuration and side, the figures of `base.run_figures`."""
    settings = real_settings(args)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-twin-") as tmp:
        twin = random_twin(args.model_dir, Path(tmp))
        args.start_accuracy = math.nan
        for length, group in sweep_configs(args.lengths, args.groups, args.full_grid):
            config = sweep_settings(settings, length, group, args.sweep_prompts)
            entry: dict[str, Any] = {"length": length, "group": group, "settings": config}
            for side in base.SIDES:
                steps = args.warmup + args.sweep_steps
                record = spawn(side, args.seeds[0], steps, twin, config, args)
                entry[side] = base.run_figures(record, args.warmup) | {"record": record}
            results.append(entry)
    return {"settings": settings, "configs": results, "tables": {"sweep": sweep_rows(results)}}


# --- tables ----------------------------------------------------------------------------------


def real_table_rows(summary: dict[str, Any]) -> list[list[str]]:
    """The side-by-side table: CPU first (the steady figure on a shared machine)."""
    rows = [
        [
            "",
            "CPU s / rollout step",
            "wall s / step",
            "completion tok / CPU s",
            "completion tok / step",
            "peak RSS MB",
            "held-out acc",
        ]
    ]
    for side, f in summary["sides"].items():
        rows.append(
            [
                base._label(side),
                base._pm(f["cpu_s"], ".2f"),
                base._pm(f["step_s"], ".2f"),
                base._pm(f["tokens_per_cpu_s"], ".1f"),
                base._pm(f["tokens_per_step"], ".0f"),
                base._pm(f["peak_rss_mb"], ".0f"),
                f"{f['accuracy_start'][0]:.3f} → {base._pm(f['accuracy_end'], '.3f')}",
            ]
        )
    r = summary["ratios"]
    if r:
        rows.append(
            [
                "gspo ÷ TRL (speed)",
                f"{base._pm(r['cpu'], '.2f')}×",
                f"{base._pm(r['wall'], '.2f')}×",
                f"{base._pm(r['tokens_per_cpu_s'], '.2f')}×",
                "",
                "",
                f"Δ {base._pm(r['accuracy_end_diff'], '+.3f')}",
            ]
        )
    return rows


def cpu_phase_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Where a rollout step's CPU time goes, per side."""
    rows = [["", "rollout (sample, score, π_old)", "rest (updates, bookkeeping)", "whole step"]]
    for side, f in summary["sides"].items():
        if "rollout_cpu_s" in f:
            cells = [base._pm(f[k], ".2f") for k in ("rollout_cpu_s", "update_cpu_s", "cpu_s")]
            rows.append([base._label(side), *cells])
    return rows


def sweep_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per configuration: CPU s per step of each side, their ratio, the completion
    tokens each generated per step, and each side's rollout share of the step's CPU."""
    rows = [
        [
            "new tokens",
            "G",
            "completions",
            "gspo CPU s / step",
            "TRL CPU s / step",
            "TRL ÷ gspo",
            "tokens / step (gspo, TRL)",
            "rollout share (gspo, TRL)",
        ]
    ]
    for entry in results:
        ours, theirs = entry["gspo"], entry["trl"]
        shares = [f"{f['rollout_cpu_s'] / f['cpu_s']:.0%}" for f in (ours, theirs)]
        rows.append(
            [
                str(entry["length"]),
                str(entry["group"]),
                str(entry["settings"]["prompts_per_step"] * entry["group"]),
                f"{ours['cpu_s']:.2f}",
                f"{theirs['cpu_s']:.2f}",
                f"{theirs['cpu_s'] / ours['cpu_s']:.2f}×",
                f"{ours['tokens_per_step']:.0f}, {theirs['tokens_per_step']:.0f}",
                ", ".join(shares),
            ]
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if importlib.util.find_spec("trl") is None:
        print(base.INSTALL_HINT, file=sys.stderr)
        return 2
    if args.side == "start":
        return run_start(args, json.loads(args.settings))
    if args.side is not None:
        settings = json.loads(args.settings)
        return base.run_child(args, args.model_dir, settings, args.start_accuracy)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = "sweep" if args.sweep else "side-by-side"
    out = args.out or base.RESULTS_DIR / f"{stamp}-{args.model}-{mode}.json"
    args.logs = out.with_suffix("").with_name(out.stem + "-logs")
    args.logs.mkdir(parents=True, exist_ok=True)
    args.start_accuracy = None
    print(f"{args.model} ({args.model_dir}), {args.threads} threads; logs: {args.logs}")
    result = sweep(args) if args.sweep else side_by_side(args)
    result |= {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": base.machine(),
        "versions": base.versions(),
    }
    out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    for name, rows in result["tables"].items():
        print(f"\n{name}:\n\n{base.markdown_table(rows)}")
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
