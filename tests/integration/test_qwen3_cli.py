"""`gspo check` and `gspo train` on GSM8K with Qwen3's real tokenizer and a model of
Qwen3-0.6B's shape (hidden 1024, vocabulary 151,936, one layer, random weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_runs import run_cli
from families import QWEN3_TOKENIZER, qwen3_shaped

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not QWEN3_TOKENIZER.is_dir(), reason="no ../shared/models"),
]


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3's tokenizer files beside a one-layer Qwen3-0.6B-shaped model (random weights)."""
    path = tmp_path_factory.mktemp("qwen3-shape")
    qwen3_shaped(layers=1).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN3_TOKENIZER / name, path / name)
    return path


def _sets(model: Path, gsm8k: Path) -> tuple[str, ...]:
    return (
        f"model.name={model}",
        "data.task=gsm8k",
        f"data.source={gsm8k}",
        "data.eval_size=2",
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=6",
        "algo.minibatches=2",
        "train.steps=2",
        "train.eval_every=0",
    )


def test_check_shows_the_non_thinking_prompt(qwen3_dir: Path, gsm8k_dir: Path) -> None:
    """The prompt as the model sees it: Qwen3's turns and an empty think block."""
    done = run_cli("check", sets=_sets(qwen3_dir, gsm8k_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    for line in ("│ <|im_start|>user", "│ <|im_start|>assistant", "│ <think>", "│ </think>"):
        assert line in done.stdout, done.stdout
    assert "check passed" in done.stdout


def test_two_steps_train_and_count_truncation(
    qwen3_dir: Path, gsm8k_dir: Path, tmp_path: Path
) -> None:
    """Two GSPO steps run; a random model never says <|im_end|> within 6 tokens, so every
    completion is counted as truncated."""
    out = tmp_path / "run"
    done = run_cli("train", "--quiet", "--out", str(out), sets=_sets(qwen3_dir, gsm8k_dir))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    steps = [r for r in rows if "truncated_frac" in r]
    assert len(steps) == 2 and all(r["truncated_frac"] == 1.0 for r in steps), steps
    assert all(r["completion_tokens"] == 4 * 6 for r in steps), steps
