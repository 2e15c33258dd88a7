"""Where gspo puts things: every run-directory name, output root and cache path, in one place.

```
runs/<name>-<YYYYmmdd-HHMMSS>/       RUNS_ROOT, a fresh_dir
  recipe.yaml  metrics.jsonl  completions.jsonl  eval.json  samples.jsonl
  summary.png                        the run's plots (`gspo plot`, end of `gspo train`)
  tensorboard/  wandb/  mlruns/      train.report_to's offline trackers
  checkpoints/step_000400/           checkpoint_dir(run, 400): the model, trainer_state.*,
                                     optimizer/ and rng/ (N processes), manifest.json
  final/                             the last model; LoRA: merged, the adapter in adapter/
runs/compare-<name>-<time>/          a comparison: its runs, report.md, summary.png, plots
evals/<model>-<time>/                `gspo eval` of a model that is not a run
$GSPO_CACHE (~/.cache/gspo)/         cache_root()
  tiny-qwen3-v1/ ...                 embedded_model_dir(name, version)
  prepared/<task>-<key>/             prepared_root()
```
Plain names and paths only: importing this module loads nothing heavy.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
FINAL_DIR = "final"
CHECKPOINTS_DIR = "checkpoints"
STATE_STEM = "trainer_state"  # trainer_state.json + trainer_state.safetensors
LEGACY_STATE_FILE = "trainer_state.pt"  # gspo 0.1's pickle; read with weights_only=True
MANIFEST_FILE = "manifest.json"
OPTIMIZER_DIR = "optimizer"
RNG_DIR = "rng"
EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.jsonl"
REPORT_FILE = "report.md"
SUMMARY_PNG = "summary.png"
# LoRA: a checkpoint holds the adapter in PEFT's file names (PeftModel.from_pretrained reads
# them) instead of the model; final/ holds the merged model and the adapter in final/adapter/.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_DIR = "adapter"
TENSORBOARD_DIR = "tensorboard"  # train.report_to: tensorboard (event files)
WANDB_DIR = "wandb"  # train.report_to: wandb (offline run)
MLFLOW_DIR = "mlruns"  # train.report_to: mlflow (local file store)

# What a training run writes at its top level (a comparison clears exactly these when it
# restarts a run that crashed before its first checkpoint).
RUN_FILES = (
    RECIPE_FILE,
    METRICS_FILE,
    COMPLETIONS_FILE,
    CHECKPOINTS_DIR,
    FINAL_DIR,
    SUMMARY_PNG,
    TENSORBOARD_DIR,
    WANDB_DIR,
    MLFLOW_DIR,
)

RUNS_ROOT = Path("runs")
EVALS_ROOT = Path("evals")


def cache_root() -> Path:
    """Where cached artefacts (the tiny model, prepared data) live: $GSPO_CACHE, else
    ~/.cache/gspo."""
    env = os.environ.get("GSPO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gspo"


def prepared_root() -> Path:
    """Where prepared datasets are cached, one directory per content key."""
    return cache_root() / "prepared"


def embedded_model_dir(name: str, version: str) -> Path:
    """The cached, warm-started embedded model `name` at `version` (it may not exist yet)."""
    return cache_root() / f"{name}-v{version}"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step_{step:06d}"


def fresh_dir(root: Path, name: str) -> Path:
    """`root/<name>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`, ... when that exists already."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, suffix = root / f"{name}-{stamp}", 1
    while candidate.exists():
        suffix += 1
        candidate = root / f"{name}-{stamp}-{suffix}"
    return candidate
