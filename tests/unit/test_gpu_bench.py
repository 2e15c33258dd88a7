"""Unit tests for bench/gpu_bench.py: FLOP and MFU arithmetic, the table, arguments, inputs,
the no-GPU exit, and (slow) a whole run on CPU at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bench_scripts import load_bench

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_bench.py"
QWEN3_CONFIG = REPO.parent / "shared" / "models" / "qwen3-configs" / "qwen3-0.6b.json"


bench = load_bench("gpu_bench")

needs_qwen3_config = pytest.mark.skipif(
    not QWEN3_CONFIG.is_file(), reason=f"no Qwen3 config at {QWEN3_CONFIG}"
)


# --- arithmetic ------------------------------------------------------------------------------


def test_body_params_drop_one_matrix_when_tied_two_when_not() -> None:
    """1000 parameters, a 10 × 20 embedding: 800 left when tied, 600 with a separate head."""
    assert bench.body_params(1000, vocab=10, hidden=20, tied=True) == 800
    assert bench.body_params(1000, vocab=10, hidden=20, tied=False) == 600


def test_update_flops_by_hand() -> None:
    """N = 100, V = 10, H = 4, L = 2, 2 heads of 3; rows of 5 and 3 tokens, 2 and 1 scored:
    6·100·8 + 6·10·4·3 + 12·2·2·3·(25 + 9) = 4800 + 720 + 4896."""
    dims = bench.ModelDims(layers=2, hidden=4, heads=2, head_dim=3, vocab=10, body_params=100)
    assert bench.update_flops(dims, [5, 3], [2, 1]) == 4800 + 720 + 4896


def test_mfu_is_achieved_over_peak() -> None:
    """494.5 TFLOP in one second against 989 TFLOP/s is half; twice the time, a quarter."""
    assert bench.mfu(494.5e12, 1.0, 989.0) == pytest.approx(0.5)
    assert bench.mfu(494.5e12, 2.0, 989.0) == pytest.approx(0.25)
    assert bench.H200_DENSE_BF16_TFLOPS == 989.0


@needs_qwen3_config
def test_qwen3_shape_counts() -> None:
    """Qwen3-0.6B (built on the meta device): 596,049,920 parameters with the embedding tied,
    440,467,456 outside it (less 151,936 × 1024); 28 layers of 16 heads of 128."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = json.loads(QWEN3_CONFIG.read_text())
    fields.pop("architectures")
    fields.pop("torch_dtype")
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    dims = bench.model_dims(model)
    assert sum(p.numel() for p in model.parameters()) == 596_049_920
    assert dims == bench.ModelDims(28, 1024, 16, 128, 151_936, 440_467_456)
    # One row of 384 tokens, 256 scored: 6·440467456·384 + 6·151936·1024·256 + 12·28·2048·384².
    expected = 1_014_837_018_624 + 238_974_664_704 + 101_468_602_368
    assert bench.update_flops(dims, [384], [256]) == expected


# --- table -----------------------------------------------------------------------------------


def _phase(seconds: float, tokens: float, peak: float | None = 2.0) -> dict[str, Any]:
    figures: dict[str, Any] = bench.phase(seconds, tokens, peak)
    return figures


def _model_result(trl: dict[str, Any]) -> dict[str, Any]:
    update = _phase(0.5, 49152) | {"mfu": 0.4321}
    gspo = {
        "sample": _phase(4.0, 32768, 3.0),
        "old_logprobs": _phase(0.5, 49152, 5.0),
        "update": update,
        "step_s": 5.0,
        "step_tokens_per_s": 32768 / 5.0,
    }
    return {"model": "qwen3", "gspo": gspo, "hf_generate": _phase(8.0, 32768, 4.5), "trl": trl}


def test_formatting() -> None:
    """Thousands separators, fixed digits, a suffix; a dash for a missing figure."""
    assert bench.fmt(1234.567) == "1,235"
    assert bench.fmt(1234.567, 1) == "1,234.6"
    assert bench.fmt(43.21, 1, "%") == "43.2%"
    assert bench.fmt(None, 2) == "—"


def test_phase_figures() -> None:
    """Tokens per second is tokens over seconds."""
    assert bench.phase(2.0, 500.0, None) == {
        "seconds": 2.0,
        "tokens": 500.0,
        "tokens_per_s": 250.0,
        "peak_gb": None,
    }


def test_table_rows_per_side() -> None:
    """gspo: sample and update tok/s, MFU in %, step, the largest phase peak; HF generate:
    only sampling; TRL: sampling, step and tok/s."""
    trl = {"step_s": 12.5, "tokens_per_s": 2621.44, "sample_tokens_per_s": 3276.8, "peak_gb": 9}
    rows = bench.table_rows([_model_result(trl)])
    assert rows[0] == ["qwen3", "gspo", "8,192", "98,304", "43.2%", "5.00", "6,554", "5.0"]
    assert rows[1] == ["qwen3", "HF generate", "4,096", "—", "—", "—", "—", "4.5"]
    assert rows[2] == ["qwen3", "TRL GRPOTrainer", "3,277", "—", "—", "12.50", "2,621", "9.0"]
    assert all(len(row) == len(bench.TABLE_HEADER) for row in rows)


def test_table_rows_say_why_a_side_or_model_is_missing() -> None:
    """A skipped or failed side, or a skipped model, is one row with the reason."""
    rows = bench.table_rows(
        [_model_result({"skipped": "--no-trl"}), {"model": "smollm2", "skipped": "no config"}]
    )
    assert rows[2][:3] == ["qwen3", "TRL GRPOTrainer skipped: --no-trl", "—"]
    assert rows[3] == ["smollm2", "skipped: no config", *["—"] * 6]
    failed = _model_result({"skipped": "--no-trl"})
    failed["hf_generate"] = {"error": "OutOfMemoryError: CUDA"}
    assert bench.table_rows([failed])[1][1] == "HF generate error: OutOfMemoryError: CUDA"


def test_table_without_cuda_has_no_peak() -> None:
    """On CPU there is no peak memory figure."""
    result = _model_result({"skipped": "--no-trl"})
    for key in ("sample", "old_logprobs", "update"):
        result["gspo"][key]["peak_gb"] = None
    assert bench.table_rows([result])[0][-1] == "—"


def test_markdown_table() -> None:
    """Header, separator, one line per row."""
    text = bench.markdown_table(["a", "b"], [["1", "2"], ["3", "4"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]


# --- arguments and inputs --------------------------------------------------------------------


def test_defaults_are_the_documented_batch() -> None:
    """16 prompts × 8 = 128 rows, 128-token prompts, 256 new tokens, 4 minibatches."""
    args = bench.parse_args([])
    sizes = (args.prompts, args.group, args.prompt_tokens, args.new_tokens, args.minibatches)
    assert sizes == (16, 8, 128, 256, 4)
    assert args.models == ["qwen3", "smollm2"] and args.qwen3_config == bench.DEFAULT_QWEN3_CONFIG
    assert args.peak_tflops == 989.0 and not args.allow_cpu and args.layers is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--minibatches", "3"],  # 128 rows do not split in 3
        ["--group", "1"],  # GRPO needs a group
        ["--iters", "0"],
        ["--layers", "0"],
        ["--models", "llama"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2, argv


def test_random_prompts_have_exact_length_away_from_special_ids() -> None:
    """Seeded, `tokens` ids each, inside [100, 30000) for a large vocabulary."""
    prompts = bench.random_prompts(3, 5, 151_936, seed=0)
    assert prompts == bench.random_prompts(3, 5, 151_936, seed=0)
    ids = [int(i) for p in prompts for i in p.split()]
    assert len(ids) == 15 and all(100 <= i < 30_000 for i in ids)


def test_id_tokenizer_reads_ids_and_pads_left() -> None:
    """Words are ids; EOS pads on the left."""
    tokenizer = bench.id_tokenizer(50, eos_id=2)
    enc = tokenizer(["5 6 7", "9 8"], return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc["input_ids"].tolist() == [[5, 6, 7], [2, 9, 8]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 2


def test_smollm2_config_is_its_published_shape() -> None:
    """The hard-coded SmolLM2-135M shape builds a 134.5M-parameter Llama (meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(bench.SMOLLM2_CONFIG)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


# --- runs ------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit")
def test_without_cuda_it_says_so_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No CUDA and no --allow-cpu: one line, exit 0, nothing written."""
    assert bench.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no CUDA device" in out[0]
    assert not list(tmp_path.iterdir())


def _run(tmp_path: Path, *flags: str) -> dict[str, Any]:
    """The script in a subprocess on CPU at tiny sizes, one thread; its JSON report."""
    tiny = ["--prompts", "1", "--group", "2", "--prompt-tokens", "8", "--new-tokens", "4"]
    command = [sys.executable, str(SCRIPT), "--allow-cpu", "--layers", "1", *tiny]
    env = os.environ | {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [*command, "--out", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "| model | side |" in done.stdout
    (path,) = tmp_path.glob("gpu-*.json")
    report: dict[str, Any] = json.loads(path.read_text())
    return report


@pytest.mark.slow
@needs_qwen3_config
def test_cpu_run_on_the_qwen3_shape_writes_the_report(tmp_path: Path) -> None:
    """One layer of the Qwen3-0.6B shape (its 151,936 vocabulary kept), 2 rows: every gspo
    phase and HF generate report figures; TRL is off."""
    report = _run(
        tmp_path,
        *("--qwen3-config", str(QWEN3_CONFIG), "--models", "qwen3", "--no-trl"),
        *("--minibatches", "1", "--warmup", "0", "--iters", "1"),
    )
    keys = {"created", "device", "dtype", "peak_tflops", "versions", "settings", "models"}
    assert keys <= report.keys() and report["device"] == "cpu"
    (model,) = report["models"]
    assert model["model"] == "qwen3" and model["dims"]["vocab"] == 151_936
    assert model["dims"]["layers"] == 1 and model["trl"] == {"skipped": "--no-trl"}
    gspo = model["gspo"]
    assert {"sample", "old_logprobs", "update", "step_s", "step_tokens_per_s"} <= gspo.keys()
    assert gspo["sample"]["tokens"] > 0 and gspo["update"]["tokens"] == 2 * (8 + 4)
    assert gspo["update"]["flops"] > 0 and gspo["update"]["mfu"] > 0
    assert model["hf_generate"]["tokens_per_s"] > 0


@pytest.mark.slow
def test_cpu_run_with_trl_on_a_random_smollm2(tmp_path: Path) -> None:
    """One layer of SmolLM2's shape with random weights, TRL included (when installed)."""
    pytest.importorskip("trl")
    report = _run(tmp_path, "--models", "smollm2", "--smollm2-config-only", "--minibatches", "2")
    (model,) = report["models"]
    assert model["source"] == "random weights"
    trl = model["trl"]
    assert trl["steps_timed"] == 2 and trl["tokens"] == 2 * 4
    assert trl["step_s"] > 0 and trl["sample_tokens_per_s"] > 0
