"""Bad sizes: absurd values of each size field, a step too big for the memory free, and
prompts with no room in the model's context; each refused with one line, exit 2, nothing
written. No model loads: validation and the memory check come first."""

from __future__ import annotations

from pathlib import Path

import pytest

from gspo_cli.commands import resources

from refusals import assert_refused

HUGE = "rollout:\n  group_size: 1024\n  prompts_per_step: 256\n"  # 262,144 rows: 128 GiB of KV

# name: (command, recipe text or None for the default, --set overrides, message fragment)
CASES: dict[str, tuple[str, str | None, list[str], str]] = {
    "group size, file, train": (
        "train",
        "rollout:\n  group_size: 1000000000\n",
        [],
        "rollout.group_size: Input should be less than or equal to 1024",
    ),
    "group size, set, check": (
        "check",
        None,
        ["rollout.group_size=1000000000"],
        "rollout.group_size: Input should be less than or equal to 1024",
    ),
    "prompts per step, set, train": (
        "train",
        None,
        ["rollout.prompts_per_step=100000"],
        "rollout.prompts_per_step: Input should be less than or equal to 16384",
    ),
    "max new tokens, file, check": (
        "check",
        "rollout:\n  max_new_tokens: 1000000000\n",
        [],
        "rollout.max_new_tokens: Input should be less than or equal to 131072",
    ),
    "steps, file, prepare": (
        "prepare",
        "train:\n  steps: 1000000000000\n",
        [],
        "train.steps: Input should be less than or equal to 10000000",
    ),
    "minibatches, set, train": (
        "train",
        None,
        ["algo.minibatches=1000000000"],
        "algo.minibatches: Input should be less than or equal to 65536",
    ),
    "epochs, set, check": (
        "check",
        None,
        ["algo.epochs=1000"],
        "algo.epochs: Input should be less than or equal to 100",
    ),
    "microbatch tokens, file, train": (
        "train",
        "train:\n  microbatch_tokens: 1000000000000\n",
        [],
        "train.microbatch_tokens: Input should be less than or equal to 16777216",
    ),
    "logprob chunk, set, prepare": (
        "prepare",
        None,
        ["train.logprob_chunk_tokens=1000000000"],
        "train.logprob_chunk_tokens: Input should be less than or equal to 1048576",
    ),
    "eval size, set, prepare": (
        "prepare",
        None,
        ["data.eval_size=1000000000"],
        "data.eval_size: Input should be less than or equal to 1000000",
    ),
    "generated size, file, prepare": (
        "prepare",
        "data:\n  task: countdown\n  generated_size: 1000000000\n",
        [],
        "data.generated_size: Input should be less than or equal to 1000000",
    ),
    "log completions, set, train": (
        "train",
        None,
        ["train.log_completions=1000000000"],
        "train.log_completions: Input should be less than or equal to 262144",
    ),
    "keep last, file, check": (
        "check",
        "train:\n  keep_last: 1000000\n",
        [],
        "train.keep_last: Input should be less than or equal to 1000",
    ),
    "save every, set, compare": (
        "compare",
        None,
        ["train.save_every=1000000000"],
        "train.save_every: Input should be less than or equal to 10000000",
    ),
    "eval every, file, compare": (
        "compare",
        "train:\n  eval_every: 1000000000\n",
        [],
        "train.eval_every: Input should be less than or equal to 10000000",
    ),
    "completions per step, set, compare": (
        "compare",
        None,
        ["rollout.prompts_per_step=16384", "rollout.group_size=1024"],
        "16777216 completions per step is more than the limit of 262144",
    ),
    "memory, file, train": ("train", HUGE, [], "is free on cpu; the largest part is the KV cache"),
    "memory, set, train": (
        "train",
        None,
        ["train.microbatch_tokens=16777216", "rollout.prompts_per_step=4096"],
        "lower train.microbatch_tokens",
    ),
    "memory, file, compare": ("compare", HUGE, [], "lower rollout.prompts_per_step"),
    "memory, file, check": ("check", HUGE, [], "this recipe needs about 128."),
    "no room in the context, train": (
        "train",
        None,
        ["rollout.max_new_tokens=256"],
        "rollout.max_new_tokens 256 leaves no room for a prompt in the model's context of 256",
    ),
    "all prompts too long, check": (
        "check",
        None,
        ["rollout.max_new_tokens=251"],
        "all 7844 train prompts are longer than 5 tokens (model context 256 - "
        "rollout.max_new_tokens 251)",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_size_is_refused(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One line naming the field and its limit (or the figures), exit 2, nothing written."""
    command, text, sets, fragment = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("GSPO_CACHE", str(tmp_path / "cache"))  # check prepares its data there
    monkeypatch.setattr(resources, "available_memory", lambda device: 16 * resources.GIB)
    args = [command]
    if text is not None:
        Path("recipe.yaml").write_text(text)
        args.append("recipe.yaml")
    for assignment in sets:
        args += ["--set", assignment]
    assert_refused(args, work, code=2, fragment=fragment)
