"""LoRA against full fine-tuning for the same number of steps: greedy held-out accuracy before
and after, and each run's peak RSS, side by side with the settings.

    python bench/lora_vs_full.py --steps 200                      # the embedded tiny default
    python bench/lora_vs_full.py --recipe recipes/smollm2_sums.yaml --steps 10 \\
        --set model.name=$SMOLLM2 --set data.eval_size=64 --set rollout.max_new_tokens=16 \\
        --full-lr 1e-5 --lora-lr 1e-4

Each run is a real `gspo train` in a subprocess (evaluated at step 0 and at the end); the
peak RSS is the child's, from `wait4`. Both runs share the seed, so they see the same prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(out: Path, recipe: str | None, sets: list[str]) -> tuple[float, int]:
    """Run `gspo train`; (wall seconds, peak RSS in bytes)."""
    command = [sys.executable, "-m", "gspo_cli", "train", "--quiet", "--out", str(out)]
    command += [recipe] if recipe else []
    for s in sets:
        command += ["--set", s]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def accuracies(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=None, help="recipe file (default: the built-in)")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--full-lr", type=float, default=None, help="optim.lr of the full run")
    parser.add_argument("--lora-lr", type=float, default=None, help="model.lora.lr")
    parser.add_argument("--lora", action="append", default=[], help="extra model.lora.K=V")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="lora-vs-full-"))
    common = [*args.sets, f"train.steps={args.steps}", "train.eval_every=0"]
    full = common + ([f"optim.lr={args.full_lr}"] if args.full_lr else [])
    lora = common + [f"model.lora.{kv}" for kv in args.lora]
    lora += [f"model.lora.lr={args.lora_lr}"] if args.lora_lr else []
    if not any(s.startswith("model.lora.") for s in lora):
        lora.append("model.lora.rank=16")
    print(f"recipe {args.recipe or 'built-in'}, {args.steps} steps, runs in {root}")
    print("| run | settings | accuracy before → after | gain | wall | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name, sets in (("full", full), ("LoRA", lora)):
        seconds, rss = train(root / name, args.recipe, sets)
        acc = accuracies(root / name)
        shown = " ".join(s for s in sets if s not in common) or "recipe defaults"
        print(
            f"| {name} | {shown} | {acc[0]:.3f} → {acc[-1]:.3f} | {acc[-1] - acc[0]:+.3f} "
            f"| {seconds:.0f} s | {rss / 2**30:.2f} GiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
