"""`gspo check`: the default recipe passes and shows its arithmetic and prompts; each broken
reward and each indivisible batch is one specific message with exit code 2; `gspo train`
runs the same reward check before the model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gspo_cli.cli import app

runner = CliRunner()

REWARDS = {
    "nan": ("import math\ndef fn(completion, reference):\n    return math.nan\n", "returned nan"),
    "raises": (
        "def fn(completion, reference):\n    raise KeyError('answer')\n",
        "raised KeyError: 'answer'",
    ),
    "signature": ("def fn(completion):\n    return 1.0\n", "fn(completion) cannot be called"),
    "string": ("def fn(completion, reference):\n    return '1.0'\n", "returned a str ('1.0')"),
}


def _user_reward(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, module: str) -> str:
    """Write the case's reward into `module.py` in the (new) working directory; its spec."""
    (tmp_path / f"{module}.py").write_text(REWARDS[case][0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{module}:fn"


def test_default_recipe_passes_showing_arithmetic_and_two_prompts() -> None:
    """Exit 0; the table has 16 × 8 = 128 completions, 32 per minibatch, 4800 optimiser steps;
    two addition prompts are shown as rendered (no chat template: the bare `a+b=`)."""
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    out = result.output
    for row in (
        "completions per step               128  16 prompts × group size 8",
        "responses per minibatch             32  128 completions / 4 minibatches",
        "optimiser steps per rollout step     4  4 minibatches × 1 epoch",
        "optimiser steps in total          4800  1200 rollout steps × 4",
        "micro-batches per minibatch        ≤ 1  8192 tokens / ≤ 14 per row = 585 rows",
    ):
        assert row in out, out
    assert "prompt 1, exactly as the model sees it (6 tokens; reference" in out, out
    assert "prompt 2, exactly as the model sees it" in out and "prompt 3" not in out, out
    assert out.count("\n│ ") == 2, out  # each prompt is one line: `a+b=`
    assert "reward exact on 3 prepared examples: correct answers score 1, 9 malformed" in out
    assert "check passed: no problems" in out and "error" not in out, out


def test_per_process_arithmetic() -> None:
    """--nproc 2: 16 / 2 = 8 prompts and 8 × 8 = 64 completions per process."""
    result = runner.invoke(app, ["check", "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert "prompts per process                  8  16 prompts / 2 processes" in result.output
    assert "completions per process             64  8 prompts × group size 8" in result.output


def test_chat_template_prompt_is_shown_line_by_line(qwen_style_model_dir: Path) -> None:
    """With a chat template the prompt is shown with its turn markers, one bar per line."""
    result = runner.invoke(app, ["check", "--set", f"model.name={qwen_style_model_dir}"])
    assert result.exit_code == 0, result.output
    assert "│ <|im_start|>user\n│ " in result.output, result.output
    assert "<|im_end|>\n│ <|im_start|>assistant\n│ \n" in result.output, result.output


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (
            ["--set", "algo.minibatches=6"],
            [
                "algo.minibatches: 6 does not divide the 128 completions per step",
                "(rollout.prompts_per_step 16 × rollout.group_size 8)",
                "set algo.minibatches to 4 or 8",
                "rollout.prompts_per_step to 15 or 18",
            ],
        ),
        (
            ["--nproc", "3"],
            [
                "16 prompts do not split evenly over 3 processes",
                "run on 1, 2, 4, 8, 16 processes",
                "such as 15 or 18",
            ],
        ),
    ],
)
def test_indivisible_batches_are_refused_naming_the_factors(
    overrides: list[str], fragments: list[str]
) -> None:
    """Minibatches that do not divide the completions, or processes that do not divide the
    prompts: exit 2, one message naming every factor and the nearest valid values."""
    result = runner.invoke(app, ["check", *overrides])
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", sorted(REWARDS))
def test_each_broken_reward_gets_one_specific_message(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reward returning NaN or a string, raising, or with the wrong signature: exit 2 and
    one error naming the function, with this case's message and none of the others'."""
    spec = _user_reward(tmp_path, monkeypatch, case, f"check_reward_{case}")
    result = runner.invoke(app, ["check", "--set", f"reward={spec}"])
    assert result.exit_code == 2, result.output
    out = result.output
    assert out.count("error:") == 1 and f"reward '{spec}'" in out, out
    for other, (_, fragment) in REWARDS.items():
        assert (fragment in out) == (other == case), (other, out)
    assert "Traceback" not in out


def test_train_with_a_nan_reward_fails_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gspo train` probes the reward after preparing data, before loading the model: exit 2
    with the same message as `gspo check`, and no run directory left behind."""
    spec = _user_reward(tmp_path, monkeypatch, "nan", "train_reward_nan")

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("gspo_cli.commands.trainsetup._build_policy", no_model)
    out_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", "--set", f"reward={spec}", "--out", str(out_dir), "-q"])
    assert result.exit_code == 2, result.output
    assert f"reward check on 3 prepared examples: reward '{spec}' returned nan" in result.output
    assert not out_dir.exists(), list(out_dir.iterdir())


def test_every_problem_is_listed_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing model directory, 3 processes for 16 prompts and a raising reward: one error
    listing all three; the reward is still probed (on the unprepared examples)."""
    spec = _user_reward(tmp_path, monkeypatch, "raises", "check_reward_all")
    args = ["check", "--set", "model.name=./no/such/model", "--set", f"reward={spec}"]
    result = runner.invoke(app, [*args, "--nproc", "3"])
    assert result.exit_code == 2, result.output
    out = result.output
    assert "gspo check: the default recipe has 3 problems:" in out, out
    assert "model.name './no/such/model' looks like a local path" in out, out
    assert "16 prompts do not split evenly over 3 processes" in out, out
    assert f"reward '{spec}' raised KeyError: 'answer' on completion=" in out, out
    assert "prompt 1" not in out, out


def test_a_long_prompt_is_shown_cut(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200,000-character prompt is shown as its first and last 1000 characters around a
    note of how many were cut, not printed whole. (The tiny model's context, 256 tokens,
    would drop it: here the model is taken to name no context length.)"""
    from gspo_cli.commands import resources

    monkeypatch.setattr(resources, "context_fit", lambda name, max_new_tokens: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GSPO_CACHE", str(tmp_path / "cache"))
    long = "1+" * 100_000 + "1="
    rows = [{"q": long, "a": "3"}] + [{"q": "1+2=", "a": "3"}] * 11
    Path("d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = ["data.task=custom", "data.source=d.jsonl", "data.prompt_field=q"]
    args = ["check", *(a for s in [*sets, "data.answer_field=a"] for a in ("--set", s))]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output[-2000:]
    assert f"… {len(long) - 2000} characters cut …" in result.output, result.output[-3000:]
    assert len(result.output) < 10_000, len(result.output)
