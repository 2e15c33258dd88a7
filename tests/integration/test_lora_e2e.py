"""End to end with LoRA (model.lora) on the tiny default: what a run writes (the adapter in
PEFT's format in each checkpoint, the merged model in final/ with the adapter beside it, an
optimiser over the adapter alone), `gspo eval` of the run, the checkpoint and the merged
model agreeing, LoRA with Routing Replay on the tiny Qwen3-MoE, and the refusal without peft."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from gspo_cli.rundir.checkpoint import load_trainer_state
from gspo_cli.rundir.manifest import damage, read_manifest
from gspo_cli.rundir.metrics import read_metrics

from cli_runs import SMALL, cli_env, run_cli, train

pytest.importorskip("peft")

LORA = ("model.lora.rank=4", "model.lora.lr=1e-2")


@pytest.fixture(scope="module")
def lora_run(warm_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 LoRA steps of the tiny default, evaluated (32 examples) at the end, one checkpoint."""
    out = tmp_path_factory.mktemp("lora") / "run"
    result = train(out, *SMALL, *LORA, "train.eval_every=0", "train.save_every=3")
    assert result.returncode == 0, result.stderr
    return out


def test_checkpoint_holds_the_adapter_and_final_the_merged_model(lora_run: Path) -> None:
    """The checkpoint has PEFT's two adapter files (hashed in its manifest) and no model
    weights; its optimiser holds the adapter's 56 tensors only (4 layers × 7 projections ×
    A, B); final/ is an ordinary Qwen3 directory with the adapter in final/adapter/."""
    ckpt = lora_run / "checkpoints" / "step_000003"
    manifest = read_manifest(ckpt)
    assert manifest is not None and damage(ckpt) is None
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest["files"])
    assert not (ckpt / "model.safetensors").exists()
    optimizer = load_trainer_state(ckpt)["optimizer"]
    assert len(optimizer["state"]) == 4 * 7 * 2
    assert len(optimizer["param_groups"][0]["params"]) == 4 * 7 * 2
    config = json.loads((ckpt / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 32.0, "LORA")
    assert config["base_model_name_or_path"] == "tiny-qwen3"
    final = lora_run / "final"
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert not any("lora" in name for name in model.state_dict())


def test_eval_of_run_checkpoint_and_merged_model_agree(lora_run: Path, tmp_path: Path) -> None:
    """`gspo eval` of the run (its merged final/), of its checkpoint (base model from the
    recipe + adapter) and of final/ as a plain model give the same greedy accuracy, which is
    the accuracy the trainer logged at its last step."""
    scores = []
    for i, target in enumerate(
        [lora_run, lora_run / "checkpoints/step_000003", lora_run / "final"]
    ):
        out = tmp_path / f"eval{i}"
        result = run_cli("eval", str(target), "--limit", "32", "--quiet", "--out", str(out))
        assert result.returncode == 0, result.stderr
        scores.append(json.loads((out / "eval.json").read_text())["scores"]["greedy_pass@1"])
    last = [r for r in read_metrics(lora_run / "metrics.jsonl") if "eval_accuracy" in r][-1]
    assert scores == [last["eval_accuracy"]] * 3, (scores, last)


def test_lora_with_routing_replay_on_qwen3_moe(tiny_moe_dir: Path, tmp_path: Path) -> None:
    """LoRA (the router `gate` left out) trains the tiny Qwen3-MoE with Routing Replay and
    logs router drift every step."""
    out = tmp_path / "moe"
    sets = (*SMALL, *LORA, f"model.name={tiny_moe_dir}", "algo.routing_replay=true")
    result = train(out, *sets, "train.steps=2", "train.eval_every=0", "train.save_every=0")
    assert result.returncode == 0, result.stderr
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "router_drift" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0 <= r["router_drift"] <= 1 for r in rows)
    config = json.loads((out / "final" / "adapter" / "adapter_config.json").read_text())
    assert "gate" not in config["target_modules"] and "q_proj" in config["target_modules"]


def test_lora_without_peft_is_one_line_before_any_model_loads(tmp_path: Path) -> None:
    """With peft hidden, `gspo train` with model.lora exits 2 with one line naming the
    install command, no traceback, and nothing written into the run but its start."""
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "from gspo_cli.cli import app\n"
        "sys.argv = ['gspo'] + sys.argv[1:]\n"
        "app()\n"
    )
    out = tmp_path / "run"
    args = ["train", "--quiet", "--out", str(out), "--set", "model.lora.rank=4"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert 'pip install "gspo-cli[lora]"' in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert not (out / "checkpoints").exists()
