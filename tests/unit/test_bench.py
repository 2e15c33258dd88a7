"""Unit tests for the benchmark harness's pure parts: arguments, settings, summary arithmetic."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gspo_cli.recipe import load_recipe

from bench_scripts import load_bench

bench = load_bench("trl_vs_gspo")


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


# --- settings tables other than the tiny default ---------------------------------------------


def test_task_examples_follow_the_settings() -> None:
    """`addition` for the tiny default; `sums` with its default instruction for a real model."""
    assert bench.task_examples("test")[0].prompt.endswith("=")
    sums = {"task": "sums"}
    train, test = bench.task_examples("train", sums), bench.task_examples("test", sums)
    assert (len(train), len(test)) == (272, 128)
    assert test[0].prompt == "What is 15 + 18?\n\nAnswer with just the number."
    assert test[0].reference == "33"


def test_cpu_split_is_rollout_and_the_rest_of_each_timed_step() -> None:
    """Steps of 3 and 4 CPU s after warm-up, rollouts of 1 and 2: rollout 1.5, rest 2."""
    rec = record("trl", 0, [10.0, 6.0, 8.0], cpu_phases_s={"rollout_cpu_s": [9.0, 1.0, 2.0]})
    assert bench.cpu_split(rec, warmup=1) == {"rollout_cpu_s": 1.5, "update_cpu_s": 2.0}
    assert bench.cpu_split(record("trl", 0, [1.0]), warmup=0) == {}  # no CPU phases recorded


def test_run_figures_count_tokens_per_cpu_second_and_per_step() -> None:
    """400 tokens a step; after warm-up 2 steps of 0.5 and 1.5 CPU s: 800 / 2 = 400 per CPU s."""
    fig = bench.run_figures(record("gspo", 0, [5.0, 1.0, 3.0]), warmup=1)
    assert fig["tokens_per_cpu_s"] == 400.0 and fig["tokens_per_step"] == 400.0


def test_timed_records_by_the_clock_it_is_given() -> None:
    """A clock that reads 1 then 4: the call took 3 of its units; the result passes through."""
    ticks = iter([1.0, 4.0])
    phases: dict[str, list[float]] = {}
    wrapped = bench.timed(phases, "f", lambda x: x * 2, clock=lambda: next(ticks))
    assert wrapped(21) == 42 and phases == {"f": [3.0]}


# --- the real-model benchmark ----------------------------------------------------------------


real = load_bench("real_model_bench")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """Enough of a model directory for argument checks: a config.json."""
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    return tmp_path


def test_real_defaults_are_the_smollm2_recipe_at_64_tokens(model_dir: Path) -> None:
    """4 prompts × 8, temperature 0.7, lr 5e-6, `sums` with gsm8k_flexible, 128 held out,
    64 new tokens; everything else as in the tiny comparison."""
    settings = real.real_settings(real.parse_args(["--model-dir", str(model_dir)]))
    assert (settings["prompts_per_step"], settings["group_size"]) == (4, 8)
    assert (settings["temperature"], settings["lr"], settings["max_new_tokens"]) == (0.7, 5e-6, 64)
    assert (settings["task"], settings["reward"], settings["eval_size"]) == (
        "sums",
        "gsm8k_flexible",
        128,
    )
    assert settings["minibatches"] == 4 and settings["clip_low"] == bench.SETTINGS["clip_low"]
    assert settings["evaluate"] and settings["train_eval_size"] == 1


def test_real_command_line_changes_the_one_table(model_dir: Path) -> None:
    """Each flag lands in the settings both sides read."""
    argv = ["--model-dir", str(model_dir), "--max-new-tokens", "128", "--prompts", "2"]
    argv += ["--group", "16", "--temperature", "1.0", "--lr", "1e-5", "--eval-size", "32"]
    settings = real.real_settings(real.parse_args(argv))
    assert (settings["max_new_tokens"], settings["prompts_per_step"]) == (128, 2)
    assert (settings["group_size"], settings["temperature"], settings["lr"]) == (16, 1.0, 1e-5)
    assert settings["eval_size"] == 32


def test_real_settings_build_the_matching_gspo_recipe(model_dir: Path) -> None:
    """Our side's recipe from the real table: task, reward, sampling and the small internal
    evaluation."""
    settings = real.real_settings(real.parse_args(["--model-dir", str(model_dir)]))
    recipe = load_recipe(None, bench.gspo_overrides(6, 0, model_dir, settings))
    assert recipe.data.task == "sums" and recipe.reward_terms[0][0] == "gsm8k_flexible"
    assert recipe.data.instruction == "Answer with just the number."
    assert (recipe.rollout.prompts_per_step, recipe.rollout.group_size) == (4, 8)
    assert (recipe.rollout.max_new_tokens, recipe.rollout.temperature) == (64, 0.7)
    assert recipe.optim.lr == 5e-6 and recipe.data.eval_size == 1


@pytest.mark.parametrize(
    "extra",
    [
        ["--prompts", "3", "--group", "5"],  # 15 completions do not split into 4 minibatches
        ["--group", "1"],
        ["--max-new-tokens", "0"],
        ["--steps", "6", "--warmup", "6"],
        ["--temperature", "0"],
        ["--lr", "-1e-5"],
        ["--eval-size", "0"],
        ["--sweep", "--groups", "6", "--sweep-prompts", "1"],  # 6 completions, 4 minibatches
        ["--sweep", "--lengths", "0"],
        ["--side", "gspo", "--json", "x.json"],  # a child needs --settings
        ["--model", "qwen3"],
    ],
)
def test_real_bad_arguments_exit_2(model_dir: Path, extra: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        real.parse_args(["--model-dir", str(model_dir), *extra])
    assert exc.value.code == 2, extra


def test_real_needs_a_model_directory(tmp_path: Path) -> None:
    """No --model-dir, or one without config.json: a usage error."""
    for argv in ([], ["--model-dir", str(tmp_path)]):
        with pytest.raises(SystemExit) as exc:
            real.parse_args(argv)
        assert exc.value.code == 2


def test_sweep_with_warmup_needs_no_timed_steps_of_steps(model_dir: Path) -> None:
    """The sweep times --sweep-steps after --warmup; --steps does not bound it."""
    args = real.parse_args(["--model-dir", str(model_dir), "--sweep", "--steps", "1"])
    assert args.sweep and args.warmup == 1 and args.sweep_steps == 2


def test_sweep_configs_cross_and_full() -> None:
    """Cross: lengths at the middle group, then the other groups at the shortest length."""
    assert real.sweep_configs([32, 64, 128, 256], [4, 8, 16], full=False) == [
        (32, 8),
        (64, 8),
        (128, 8),
        (256, 8),
        (32, 4),
        (32, 16),
    ]
    assert real.sweep_configs([64, 32, 64], [8], full=False) == [(32, 8), (64, 8)]
    full = [(32, 4), (32, 16), (64, 4), (64, 16)]
    assert real.sweep_configs([32, 64], [4, 16], full=True) == full


def test_sweep_settings_change_length_group_prompts_and_stop_evaluation() -> None:
    changed = real.sweep_settings(real.REAL_SETTINGS, 256, 16, 2)
    assert (changed["max_new_tokens"], changed["group_size"], changed["prompts_per_step"]) == (
        256,
        16,
        2,
    )
    assert changed["evaluate"] is False and changed["lr"] == real.REAL_SETTINGS["lr"]
    assert real.REAL_SETTINGS["evaluate"] is True  # the defaults are not touched


def test_real_tables_lead_with_cpu_time() -> None:
    """gspo 1 CPU s a step, TRL 2 (wall twice that): 2.00×; tokens per CPU s 400 vs 200."""
    records = [
        record("gspo", 0, [2.0, 2.0], cpu_phases_s={"rollout_cpu_s": [0.25, 0.25]}),
        record("trl", 0, [4.0, 4.0], cpu_phases_s={"rollout_cpu_s": [0.5, 0.5]}),
    ]
    summary = bench.summarize(records, warmup=0)
    rows = real.real_table_rows(summary)
    assert rows[0][1] == "CPU s / rollout step"
    assert rows[1][1:5] == ["1.00 ± 0.00", "2.00 ± 0.00", "400.0 ± 0.0", "400 ± 0"]
    assert rows[2][1] == "2.00 ± 0.00" and rows[2][3] == "200.0 ± 0.0"
    assert rows[3][1:4] == ["2.00 ± 0.00×", "2.00 ± 0.00×", "2.00 ± 0.00×"]
    phases = real.cpu_phase_rows(summary)
    assert phases[1] == ["gspo train", "0.25 ± 0.00", "0.75 ± 0.00", "1.00 ± 0.00"]
    assert phases[2] == ["TRL GRPOTrainer", "0.50 ± 0.00", "1.50 ± 0.00", "2.00 ± 0.00"]


def test_sweep_rows_give_the_ratio_tokens_and_rollout_share() -> None:
    """gspo 2 CPU s, TRL 5: 2.50×; 2 prompts × 8 = 16 completions of 32 tokens = 512."""
    entry = {
        "length": 32,
        "group": 8,
        "settings": {"prompts_per_step": 2},
        "gspo": {"cpu_s": 2.0, "rollout_cpu_s": 0.5, "tokens_per_step": 512.0},
        "trl": {"cpu_s": 5.0, "rollout_cpu_s": 2.0, "tokens_per_step": 512.0},
    }
    rows = real.sweep_rows([entry])
    assert len(rows) == 2 and len(rows[0]) == len(rows[1])
    assert rows[1] == ["32", "8", "16", "2.00", "5.00", "2.50×", "512, 512", "25%, 40%"]


SHARED_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"


@pytest.mark.slow
def test_real_harness_runs_end_to_end_on_a_small_llama(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both modes on a 4-layer llama with random weights around SmolLM2's tokenizer and chat
    template: the side-by-side (start evaluation, then each side) writes its tables, and in
    the sweep both sides generate exactly `max_new_tokens` on every row."""
    pytest.importorskip("trl")
    if not (SHARED_MODELS / "smollm2-135m-instruct" / "tokenizer.json").is_file():
        pytest.skip(f"no SmolLM2 tokenizer under {SHARED_MODELS}")
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from families import bpe_tokenizer, save_family

    llama = save_family("llama", bpe_tokenizer(), tmp_path / "llama")
    common = ["--model-dir", str(llama), "--threads", "1", "--warmup", "1"]
    side_by_side = [*common, "--steps", "2", "--prompts", "1", "--group", "4"]
    side_by_side += ["--max-new-tokens", "4", "--eval-size", "2"]
    side_by_side += ["--out", str(tmp_path / "a.json")]
    assert real.main(side_by_side) == 0
    result = json.loads((tmp_path / "a.json").read_text(encoding="utf-8"))
    assert {r["side"] for r in result["runs"]} == {"gspo", "trl"}
    assert [row[0] for row in result["tables"]["main"]][1:] == [
        "gspo train",
        "TRL GRPOTrainer",
        "gspo ÷ TRL (speed)",
    ]
    sweep = [*common, "--sweep", "--lengths", "6", "--groups", "4", "--sweep-prompts", "1"]
    sweep += ["--sweep-steps", "1", "--out", str(tmp_path / "b.json")]
    assert real.main(sweep) == 0
    (config,) = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))["configs"]
    assert config["gspo"]["tokens_per_step"] == config["trl"]["tokens_per_step"] == 4 * 6
