"""Unit tests for the benchmark harness's pure parts: arguments, settings, summary arithmetic."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from gspo_cli.recipe import load_recipe

HARNESS = Path(__file__).resolve().parents[2] / "bench" / "trl_vs_gspo.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trl_vs_gspo", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


def record(side: str, seed: int, wall: list[float], **extra: Any) -> dict[str, Any]:
    """A hand-made run record; CPU time is half the wall time, 400 tokens per step."""
    n = len(wall)
    phases = {"sample_s": [0.1] * n, "score_s": [0.0] * n}
    if side == "gspo":
        phases |= {"old_logprob_s": [0.1] * n, "update_s": [w - 0.2 for w in wall]}
    else:
        phases |= {"rollout_s": [0.25] * n}
    return {
        "side": side,
        "seed": seed,
        "step_wall_s": wall,
        "step_cpu_s": [w / 2 for w in wall],
        "completion_tokens": [400] * n,
        "phases_s": phases,
        "peak_rss_mb": 500.0,
        "accuracy_start": 0.25,
        "accuracy_end": 0.3,
    } | extra


# --- arguments -------------------------------------------------------------------------------


def test_documented_command_parses() -> None:
    """`--steps 50 --seeds 0 1 2` is the README's command; it runs the parent, not a child."""
    args = bench.parse_args(["--steps", "50", "--seeds", "0", "1", "2"])
    assert (args.steps, args.seeds, args.side, args.warmup) == (50, [0, 1, 2], None, 1)
    assert args.threads >= 1


def test_child_arguments_parse() -> None:
    """The parent re-invokes the script with --side/--seed/--json."""
    args = bench.parse_args(["--side", "trl", "--seed", "3", "--json", "x.json", "--steps", "2"])
    assert (args.side, args.seed, args.json, args.steps) == ("trl", 3, Path("x.json"), 2)


@pytest.mark.parametrize(
    "argv",
    [
        ["--steps", "0"],
        ["--steps", "2", "--warmup", "2"],
        ["--threads", "0"],
        ["--side", "gspo"],  # a child needs --json
        ["--side", "tf", "--json", "x"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    """Impossible combinations are usage errors (argparse exits 2)."""
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2, argv


def test_missing_trl_exits_2_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without TRL the harness says how to install the bench extra and exits 2."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a)
    )
    assert bench.main(["--steps", "1", "--warmup", "0"]) == 2
    assert "pip install -e '.[bench]'" in capsys.readouterr().err


# --- settings --------------------------------------------------------------------------------


def test_gspo_overrides_give_the_shared_settings(tmp_path: Path) -> None:
    """The recipe built for our side carries every value of SETTINGS, with evaluation and
    periodic checkpoints off."""
    recipe = load_recipe(None, bench.gspo_overrides(7, 2, tmp_path))
    s = bench.SETTINGS
    assert recipe.seed == 2 and recipe.train.steps == 7 and recipe.model.name == str(tmp_path)
    assert (recipe.rollout.prompts_per_step, recipe.rollout.group_size) == (16, 8)
    assert recipe.algo.minibatches == s["minibatches"] and recipe.algo.mode == "gspo"
    assert (recipe.algo.clip_low, recipe.algo.clip_high) == (s["clip_low"], s["clip_high"])
    assert recipe.optim.lr == s["lr"] and recipe.optim.grad_clip == s["grad_clip"]
    assert recipe.optim.warmup_steps == 0 and recipe.optim.weight_decay == 0
    assert recipe.rollout.max_new_tokens == s["max_new_tokens"]
    assert recipe.rollout.temperature == s["temperature"] and recipe.rollout.top_p == 1.0
    assert recipe.algo.kl_beta == 0 and recipe.algo.epochs == 1
    assert (recipe.train.eval_every, recipe.train.save_every) == (0, 0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_trl_config_is_one_generation_per_four_optimiser_steps(tmp_path: Path) -> None:
    """TRL: 128 completions per generation, 32 per optimiser step, 4 steps per generation."""
    pytest.importorskip("trl")
    config = bench.trl_config(5, 1, str(tmp_path))
    assert config.generation_batch_size == 128 and config.steps_per_generation == 4
    assert config.per_device_train_batch_size == 32 and config.gradient_accumulation_steps == 1
    assert config.max_steps == 20 and config.num_generations == 8 and config.seed == 1
    assert config.importance_sampling_level == "sequence" and config.loss_type == "grpo"
    assert (config.beta, config.epsilon, config.epsilon_high) == (0.0, 3e-4, 4e-4)
    assert config.top_k == 0 and not config.bf16 and not config.gradient_checkpointing


# --- arithmetic ------------------------------------------------------------------------------


def test_run_figures_leave_out_warmup_steps() -> None:
    """Means over the steps after warm-up; tokens/s is total tokens over total wall time."""
    fig = bench.run_figures(record("gspo", 0, [5.0, 1.0, 3.0]), warmup=1)
    assert fig["step_s"] == 2.0 and fig["cpu_s"] == 1.0
    assert fig["tokens_per_s"] == 800 / 4.0  # 2 steps × 400 tokens over 1 + 3 s


def test_trl_phases_are_derived_from_outside_timings() -> None:
    """TRL: π_old = generate-and-score − sample − score; update = step − generate-and-score."""
    phases = bench.phase_means(record("trl", 0, [1.0, 2.0]), warmup=0)
    assert phases["sample_s"] == pytest.approx(0.1) and phases["score_s"] == 0.0
    assert phases["old_logprob_s"] == pytest.approx(0.15)  # 0.25 - 0.1 - 0.0
    assert phases["update_s"] == pytest.approx(1.25)  # mean(1.0, 2.0) - 0.25


def test_summary_ratios_pair_each_seed() -> None:
    """Seed 0: TRL 2 s vs gspo 1 s (2×); seed 1: 3 s vs 1 s (3×): mean 2.5, std √0.5."""
    records = [
        record("gspo", 0, [9.0, 1.0], accuracy_end=0.32),
        record("trl", 0, [9.0, 2.0], accuracy_end=0.30),
        record("trl", 1, [9.0, 3.0], accuracy_end=0.31),
        record("gspo", 1, [9.0, 1.0], accuracy_end=0.33),
    ]
    summary = bench.summarize(records, warmup=1)
    assert summary["seeds"] == [0, 1]
    assert summary["ratios_by_seed"][0]["wall"] == 2.0
    assert summary["ratios_by_seed"][1]["cpu"] == 3.0
    assert summary["ratios_by_seed"][1]["tokens_per_s"] == 3.0  # same tokens, a third the time
    mean, dev = summary["ratios"]["wall"]
    assert mean == 2.5 and dev == pytest.approx(math.sqrt(0.5))
    assert summary["ratios"]["accuracy_end_diff"][0] == pytest.approx(0.02)
    assert summary["sides"]["trl"]["step_s"] == (2.5, pytest.approx(math.sqrt(0.5)))
    assert summary["sides"]["gspo"]["step_s"] == (1.0, 0.0)


def test_summary_without_a_pair_has_no_ratios() -> None:
    """One side alone is summarised, but no ratio is invented."""
    summary = bench.summarize([record("gspo", 0, [1.0, 1.0])], warmup=0)
    assert summary["ratios"] == {} and summary["ratios_by_seed"] == {}
    assert [row[0] for row in bench.table_rows(summary)] == ["", "gspo train"]


def test_tables_render_mean_and_spread() -> None:
    """One row per side plus the ratio row; Markdown has a header separator."""
    records = [record("gspo", 0, [1.0, 1.0]), record("trl", 0, [2.0, 2.0])]
    summary = bench.summarize(records, warmup=0)
    rows = bench.table_rows(summary)
    assert [row[0] for row in rows] == ["", "gspo train", "TRL GRPOTrainer", "gspo ÷ TRL (speed)"]
    assert rows[1][1] == "1.000 ± 0.000" and rows[2][1] == "2.000 ± 0.000"
    assert rows[3][1] == "2.00 ± 0.00×" and rows[3][5] == "Δ +0.000 ± 0.000"
    assert rows[1][5] == "0.250 → 0.300 ± 0.000"
    markdown = bench.markdown_table(rows).splitlines()
    assert markdown[1] == "|---|---|---|---|---|---|" and len(markdown) == 5
    assert [row[0] for row in bench.phase_rows(summary)][1:] == ["gspo train", "TRL GRPOTrainer"]
