"""Two training steps of every decoder family through the real `gspo train` (tiny models
from their configs, random weights, SmolLM2's BPE tokenizer and chat template)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cli_runs import run_cli
from families import FAMILIES, SMOLLM2_SHARED, bpe_tokenizer, save_family

pytestmark = pytest.mark.skipif(
    not (SMOLLM2_SHARED / "tokenizer.json").is_file(), reason="no ../shared/models"
)
# Families scored padded (experts, a logit transform) announce it once.
PACKED = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "olmo2", "smollm3"}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return bpe_tokenizer()


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_training_steps_through_the_cli(family: str, tokenizer: Any, tmp_path: Path) -> None:
    """`gspo train` on the family's directory: two GSPO steps exit 0 and log two rows; a
    family that cannot pack announces it once."""
    model_dir = save_family(family, tokenizer, tmp_path / family)
    sets = (
        f"model.name={model_dir}",
        "data.task=sums",  # 400 questions: preparing them for each family is quick
        "rollout.prompts_per_step=2",
        "rollout.group_size=2",
        "rollout.max_new_tokens=6",
        "algo.minibatches=2",
        "data.eval_size=4",
        "train.steps=2",
        "train.eval_every=0",
        "optim.lr=1e-3",
    )
    done = run_cli("train", "--quiet", "--out", str(tmp_path / "run"), sets=sets)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert sum('"step"' in r and '"loss"' in r for r in rows) == 2, rows
    notes = (done.stdout + done.stderr).count("log-probs: ")
    assert notes == (0 if family in PACKED else 1), done.stdout
