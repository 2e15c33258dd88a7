"""Evaluation: greedy pass@1, sampled pass@k and maj@N on a task's held-out split.

The trainer's periodic evaluation and `gspo eval` share `greedy_completions` and
`is_correct`, so `gspo eval` of a run's final model reproduces the trainer's last
`eval_accuracy` exactly. An answer is correct when the recipe's checker (its first reward,
unweighted) gives it 1.0. With `samples` = N > 0, each prompt also gets N sampled completions
at the recipe's temperature and top-p; pass@k is the unbiased estimator of Chen et al. (2021),
1 - C(n-c, k) / C(n, k) for c correct of n, averaged over prompts, and maj@N scores the most
frequent extracted answer.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gspo_cli import rewards
from gspo_cli.base.errors import ModelError
from gspo_cli.commands.prepare import load_task
from gspo_cli.commands.resources import context_fit
from gspo_cli.data import Example, render_prompt
from gspo_cli.models import lora
from gspo_cli.models.loading import load_policy, load_tokenizer, pick_device
from gspo_cli.recipe import Recipe, load_recipe
from gspo_cli.rewards import RewardFn
from gspo_cli.rollout.greedy import EVAL_BATCH_SIZE, greedy_completions, is_correct
from gspo_cli.rollout.sampling import generate
from gspo_cli.rundir.adapter import is_adapter_dir, load_adapter_weights
from gspo_cli.rundir.checkpoint import damage, write_text_atomic
from gspo_cli.rundir.paths import (
    CHECKPOINTS_DIR,
    EVAL_FILE,
    FINAL_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    SAMPLES_FILE,
)

Progress = Callable[[int, int], None]  # (completions done, completions in all)


# --- pass@k and majority vote ----------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one prompt with c correct of n samples: 1 - C(n-c, k) / C(n, k).

    >>> pass_at_k(5, 2, 1), pass_at_k(5, 2, 2), pass_at_k(5, 0, 3), pass_at_k(4, 2, 3)
    (0.4, 0.7, 0.0, 1.0)
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:  # every draw of k contains a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n.

    >>> ks_for(1), ks_for(8), ks_for(10)
    ([1], [1, 2, 4, 8], [1, 2, 4, 8, 10])
    """
    ks = [2**i for i in range(n.bit_length()) if 2**i < n]
    return [*ks, n]


def majority(answers: list[str | None]) -> str | None:
    """The most frequent answer (ties: the one seen first); None when no answer was extracted.

    >>> majority(["3", "4", "4", None, "3"]), majority([None, None])
    ('3', None)
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


# --- `gspo eval` -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalTarget:
    """What `gspo eval PATH` evaluates: a model to load, and the run it came from if any."""

    model: str  # local directory or hub id
    recipe_file: Path | None  # the run's recipe.yaml
    run_dir: Path | None  # where eval.json goes by default
    kind: Literal["run", "checkpoint", "model", "hub"]
    adapter: Path | None = None  # a LoRA checkpoint: its adapter; `model` is the base's name


def resolve_target(path: str) -> EvalTarget:
    """A run directory (its `final/`), a checkpoint of a run, a model directory or (a name
    that is no local path) a hub id; a ModelError saying what the path is instead."""
    p = Path(path).expanduser()
    if p.is_dir():
        is_run = (p / METRICS_FILE).exists() or (p / FINAL_DIR).exists()
        if (p / RECIPE_FILE).is_file() and is_run:
            if not (p / FINAL_DIR / "config.json").is_file():
                raise ModelError(
                    f"{path}: this run has no final model (final/ is missing: the run is still "
                    f"going or stopped early); evaluate one of its {CHECKPOINTS_DIR}/ instead"
                )
            return EvalTarget(str(p / FINAL_DIR), p / RECIPE_FILE, p, "run")
        run = p.parent.parent
        if is_adapter_dir(p) and p.parent.name == CHECKPOINTS_DIR and (run / RECIPE_FILE).is_file():
            if (p / MANIFEST_FILE).is_file() and (problem := damage(p)) is not None:
                raise ModelError(f"{path}: damaged checkpoint, {problem}; evaluate another")
            base = load_recipe(run / RECIPE_FILE).model.name  # the adapter's base model
            return EvalTarget(base, run / RECIPE_FILE, None, "checkpoint", adapter=p)
        if (p / "config.json").is_file():
            in_run = p.parent.name == CHECKPOINTS_DIR and (run / RECIPE_FILE).is_file()
            if in_run:
                if (p / MANIFEST_FILE).is_file() and (problem := damage(p)) is not None:
                    raise ModelError(f"{path}: damaged checkpoint, {problem}; evaluate another")
                return EvalTarget(str(p), run / RECIPE_FILE, None, "checkpoint")
            return EvalTarget(str(p), None, None, "model")
        raise ModelError(
            f"{path}: not a model: it has no config.json (a Hugging Face model directory) and "
            f"no {RECIPE_FILE} with a {FINAL_DIR}/ model (a run directory)"
        )
    if p.exists():
        raise ModelError(f"{path}: is a file; give a run, checkpoint or model directory")
    if path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise ModelError(
            f"{path}: no such directory; give a run directory, a checkpoint directory, a "
            "model directory or a hub id"
        )
    return EvalTarget(path, None, None, "hub")


@dataclass(frozen=True)
class EvalReport:
    scores: dict[str, float]
    examples: int
    samples: int
    seconds: float
    eval_file: Path
    samples_file: Path


@dataclass(frozen=True)
class Scorer:
    """Scores one completion: the recipe's reward, the checker's verdict, the extracted answer."""

    reward_fn: RewardFn
    label: str
    checker: RewardFn
    extract: rewards.Extractor

    @classmethod
    def for_recipe(cls, recipe: Recipe) -> Scorer:
        terms = recipe.reward_terms
        return cls(
            rewards.combine(terms),
            rewards.label(terms),
            rewards.checker(terms),
            rewards.extractor(terms[0][0]),
        )

    def __call__(self, completion: str, reference: str) -> dict[str, Any]:
        return {
            "completion": completion,
            "extracted": self.extract(completion),
            "reward": rewards.call(self.reward_fn, self.label, completion, reference),
            "correct": is_correct(self.checker, completion, reference),
        }


def _sample(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    recipe: Recipe,
    samples: int,
    progress: Progress,
) -> list[list[str]]:
    """`samples` sampled completions per example, at the recipe's temperature and top-p."""
    import torch

    torch.manual_seed(recipe.seed)
    rows = [render_prompt(tokenizer, e.prompt) for e in examples for _ in range(samples)]
    texts: list[str] = []
    for start in range(0, len(rows), EVAL_BATCH_SIZE):
        gen = generate(
            model,
            tokenizer,
            rows[start : start + EVAL_BATCH_SIZE],
            max_new_tokens=recipe.rollout.max_new_tokens,
            temperature=recipe.rollout.temperature,
            top_p=recipe.rollout.top_p,
        )
        texts.extend(gen.texts)
        progress(len(texts), len(rows))
    return [texts[i * samples : (i + 1) * samples] for i in range(len(examples))]


def score_records(
    examples: list[Example],
    prompts: list[str],
    greedy: list[str],
    sampled: list[list[str]],
    scorer: Scorer,
) -> list[dict[str, Any]]:
    """One samples.jsonl record per example: its greedy and sampled completions, scored."""
    records = []
    for i, (example, text, group) in enumerate(zip(examples, greedy, sampled, strict=True)):
        scored = [scorer(t, example.reference) for t in group]
        voted = majority([s["extracted"] for s in scored])
        records.append(
            {
                "index": i,
                "prompt": prompts[i],
                "reference": example.reference,
                "greedy": scorer(text, example.reference),
                "samples": scored,
                "majority": voted,
                "majority_correct": voted is not None
                and any(s["correct"] for s in scored if s["extracted"] == voted),
            }
        )
    return records


def scores_for(records: list[dict[str, Any]], samples: int) -> dict[str, float]:
    """greedy pass@1, and with samples: mean pass@k for the reported k and maj@N."""
    n = max(len(records), 1)
    scores = {"greedy_pass@1": sum(r["greedy"]["correct"] for r in records) / n}
    if samples:
        correct = [sum(s["correct"] for s in r["samples"]) for r in records]
        for k in ks_for(samples):
            scores[f"pass@{k}"] = sum(pass_at_k(samples, c, k) for c in correct) / n
        scores[f"maj@{samples}"] = sum(r["majority_correct"] for r in records) / n
    return scores


def run(
    recipe: Recipe,
    target: EvalTarget,
    out_dir: Path,
    *,
    samples: int = 0,
    limit: int | None = None,
    recipe_source: str = "",
    announce: Callable[[str], None] = print,
    progress: Progress = lambda done, total: None,
) -> EvalReport:
    """Evaluate `target`'s model on the first `limit` (default `data.eval_size`) examples of
    the recipe's prepared test split; write eval.json and samples.jsonl into `out_dir`."""
    started = time.perf_counter()
    scorer = Scorer.for_recipe(recipe)  # before any model loads: a bad reward fails first
    tokenizer = _tokenizer(target, announce)
    fit = context_fit(target.model, recipe.rollout.max_new_tokens)
    prepared, splits = load_task(recipe.data, tokenizer, target.model, announce, fit)
    examples = splits["test"][: limit or recipe.data.eval_size]
    model, tokenizer = load_policy(target.model, recipe.model.dtype, pick_device(), announce)
    if target.adapter is not None:  # a LoRA checkpoint: its base model plus the adapter
        _add_adapter(model, recipe, target)
    extra = f", {samples} samples each" if samples else ""
    announce(f"evaluating {target.model} on {len(examples)} {recipe.data.task} examples{extra}")
    total = len(examples) * (1 + samples)
    greedy, sampled = _completions(model, tokenizer, examples, recipe, samples, progress)
    prompts = [render_prompt(tokenizer, e.prompt) for e in examples]
    records = score_records(examples, prompts, greedy, sampled, scorer)
    scores = scores_for(records, samples)
    seconds = time.perf_counter() - started
    summary = {
        "model": target.model,
        "target": target.kind,
        "recipe_source": recipe_source,
        "task": recipe.data.task,
        "scores": scores,
        "settings": _settings(recipe, scorer, len(examples), limit, samples),
        "counts": _counts(records, len(splits["test"]), total),
        "data": {
            "prepared": str(prepared.directory),
            "content_hash": prepared.manifest["content_hash"],
        },
        "recipe": recipe.model_dump(mode="json"),
        "seconds": round(seconds, 3),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    eval_file, samples_file = _write(out_dir, summary, records)
    return EvalReport(scores, len(examples), samples, seconds, eval_file, samples_file)


def _add_adapter(model: Any, recipe: Recipe, target: EvalTarget) -> None:
    """Inject the run's LoRA adapter (model.lora of its recipe) and load the checkpoint's."""
    assert target.adapter is not None
    if recipe.model.lora is None:
        raise ModelError(
            f"{target.adapter} holds a LoRA adapter but the recipe has no model.lora; evaluate "
            "it with its run's recipe (the default) or evaluate the run's merged final/"
        )
    lora.attach(model, recipe.model.lora, target.model)
    load_adapter_weights(model, target.adapter)
    model.eval()


def _tokenizer(target: EvalTarget, announce: Callable[[str], None]) -> Any:
    """The target's tokenizer; for a name that is no local path, the error says it was
    tried as a hub id too."""
    try:
        return load_tokenizer(target.model, announce)
    except ModelError as exc:
        if target.kind != "hub":
            raise
        raise ModelError(
            f"{target.model}: no such local directory, and as a hub id: {exc}"
        ) from exc


def _completions(
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    recipe: Recipe,
    samples: int,
    progress: Progress,
) -> tuple[list[str], list[list[str]]]:
    """Each example's greedy completion and, with `samples`, that many sampled ones."""
    total = len(examples) * (1 + samples)
    greedy = greedy_completions(
        model,
        tokenizer,
        examples,
        max_new_tokens=recipe.rollout.max_new_tokens,
        progress=lambda done, _: progress(done, total),
    )
    sampled: list[list[str]] = [[] for _ in examples]
    if samples:
        sampled = _sample(
            model,
            tokenizer,
            examples,
            recipe,
            samples,
            lambda done, _: progress(len(examples) + done, total),
        )
    return greedy, sampled


def _counts(records: list[dict[str, Any]], test_examples: int, completions: int) -> dict[str, int]:
    return {
        "test_examples": test_examples,
        "examples": len(records),
        "completions": completions,
        "greedy_correct": sum(r["greedy"]["correct"] for r in records),
        "sampled_correct": sum(s["correct"] for r in records for s in r["samples"]),
    }


def _write(
    out_dir: Path, summary: dict[str, Any], records: list[dict[str, Any]]
) -> tuple[Path, Path]:
    """samples.jsonl (one record per example) and eval.json (the summary), atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples_file, eval_file = out_dir / SAMPLES_FILE, out_dir / EVAL_FILE
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    write_text_atomic(samples_file, "".join(lines))
    write_text_atomic(eval_file, json.dumps(summary, indent=2) + "\n")
    return eval_file, samples_file


def _settings(
    recipe: Recipe, scorer: Scorer, examples: int, limit: int | None, samples: int
) -> dict[str, Any]:
    """What decided the scores, for eval.json."""
    return {
        "examples": examples,
        "limit": limit,
        "samples": samples,
        "reward": scorer.label,
        "checker": recipe.reward_terms[0][0],
        "max_new_tokens": recipe.rollout.max_new_tokens,
        "temperature": recipe.rollout.temperature,
        "top_p": recipe.rollout.top_p,
        "seed": recipe.seed,
        "batch_size": EVAL_BATCH_SIZE,
    }
