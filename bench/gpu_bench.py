"""Throughput of one GSPO rollout step on a GPU: gspo's sampling and update against TRL.

For a Qwen3-0.6B-shaped model (random weights, from its config JSON) and SmolLM2-135M (its
pretrained weights, or random weights from its hard-coded config), in bf16 on one GPU, it
measures, on one batch of `--prompts` distinct random-id prompts × `--group` completions:

- gspo sampling: `gspo_cli.rollout.sampling.generate` at temperature 1 -> completion tokens / s;
- gspo π_old: `gspo_cli.scoring.completions.batched_logprobs` (no gradients), as `gspo train`
  runs it for bf16 policies;
- gspo update: `--minibatches` AdamW steps over the batch, each minibatch split into
  micro-batches of at most `--microbatch-tokens` padded tokens (as `gspo train` does), each a
  forward and backward of `completion_logprobs` with a sum-of-log-probs loss -> tokens / s and
  model FLOPs utilisation (MFU, below);
- HF generate: `model.generate` on the same batch (what TRL samples with when vLLM is off);
- TRL: `GRPOTrainer` (`importance_sampling_level="sequence"`) for `--warmup + --iters`
  rollout steps of the same shape -> seconds per rollout step, completion tokens / s, and
  the seconds of its `_generate_single_turn` (its sampling). Skipped with a note if `trl`
  does not import.

Each figure is a mean over `--iters` timed repetitions after `--warmup` untimed ones, with
`torch.cuda.synchronize()` around every timing; peak memory is
`torch.cuda.max_memory_allocated` (weights included), reset before each phase. A markdown
table is printed at the end and everything goes to `<--out>/gpu-<timestamp>.json` (default
`bench/results/`, which git ignores).

MFU. The model FLOPs of an update over rows r with S_r scored tokens (prompt + completion,
EOS included) of which C_r are completion tokens are (PaLM's appendix B convention, as
torchtitan counts them; forward + backward = 3 × forward):

    6 · N_body · Σ S_r  +  6 · V · H · Σ C_r  +  12 · L · n_heads · head_dim · Σ S_r²

N_body: the parameters outside the input embedding and the output head; V · H: the output
head's matrix (tied or not), applied only at completion positions since only those are
scored; the last term is attention's QKᵀ and AV over the full S × S square (not halved for
the causal mask). MFU = FLOPs / seconds / peak, the peak being the H200's dense bf16 rate from
NVIDIA's datasheet, 989 TFLOP/s (`--peak-tflops`; a large bf16 matrix product measured about
790 on these machines). Packing a shared prompt once (`gspo_cli.scoring.packing`) does less
work than these FLOPs, so gspo's figure is an "effective" MFU and can exceed what the tensor
cores did.

Models. `--qwen3-config` defaults to `../shared/models/qwen3-configs/qwen3-0.6b.json`
beside the repo. For SmolLM2, `--smollm2 DIR` loads a model directory; without it the script
builds one into a temporary directory with `../shared/models/make_smollm2.py` (needs `pip
install gguf`); `--smollm2-config-only` builds it from the config in `SMOLLM2_CONFIG` with
random weights instead (fine for throughput). A model that cannot be built is skipped with a
printed note. Prompts are random token ids through a word-level tokenizer whose words are the
ids themselves, so every model gets exactly `--prompt-tokens` prompt tokens. Random-weight
models rarely emit EOS, so completions mostly run to `--new-tokens`.

On the GPU machine (the device tool) only the repo checkout travels, not `../shared`, and its
image has torch and transformers (5.17 when last read) but neither pydantic (which
`gspo_cli` imports) nor trl/datasets. Here, in the repo root, once:

    mkdir -p .gpu && cp ../shared/models/qwen3-configs/qwen3-0.6b.json .gpu/
    echo /.gpu/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux_2_17_x86_64 \\
        --platform manylinux2014_x86_64 -d .gpu/whl \\
        pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \\
        typing-inspection==0.4.2 transformers==5.24.0 trl==1.16.0 datasets==5.2.0 \\
        dill==0.4.1 multiprocess==0.70.19

(18 MB of wheels; transformers 5.24 because `gspo_cli` is tested on it. datasets 5.2 wants
pyarrow >= 24: if the image's is older and it fails to import, TRL is skipped with a note.
The SmolLM2 GGUF, 98 MB, is over the 64 MiB that travels, hence `--smollm2-config-only`
there.) Then `run` with `carry=[".gpu"]`, `timeout_s=600` and:

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \\
        --target /tmp/site .gpu/whl/*.whl && export PYTHONPATH=/tmp/site:src \\
        PYTHONUNBUFFERED=1 && python3 bench/gpu_bench.py --qwen3-config \\
        .gpu/qwen3-0.6b.json --smollm2-config-only --out $OUT 2>&1 | tee $OUT/log.txt

Expected to take 3-5 minutes at the defaults (an estimate, not yet measured); `--iters 1`
or `--no-trl` shorten it. Without CUDA it prints one line and exits 0,
unless `--allow-cpu` (tiny sizes, for tests):

    OMP_NUM_THREADS=1 python bench/gpu_bench.py --allow-cpu --layers 1 --prompts 2 \\
        --group 2 --prompt-tokens 8 --new-tokens 4 --minibatches 2 --no-trl
"""

from __future__ import annotations

import argparse
import gc
import importlib
import itertools
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"
DEFAULT_QWEN3_CONFIG = SHARED_MODELS / "qwen3-configs" / "qwen3-0.6b.json"
MAKE_SMOLLM2 = SHARED_MODELS / "make_smollm2.py"
H200_DENSE_BF16_TFLOPS = 989.0  # NVIDIA H200 SXM datasheet, dense (no sparsity)
MODELS = ("qwen3", "smollm2")

# SmolLM2-135M-Instruct's shape, from ../shared/models/smollm2-135m-instruct/config.json
# (the fields that matter for throughput; token ids as there).
SMOLLM2_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rope_theta": 100000.0,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}


# --- pure helpers: FLOPs, MFU, formatting ---------------------------------------------------


@dataclass(frozen=True)
class ModelDims:
    """What the FLOP count needs of a decoder-only transformer."""

    layers: int
    hidden: int
    heads: int
    head_dim: int
    vocab: int
    body_params: int  # parameters outside the input embedding and the output head


def body_params(total: int, vocab: int, hidden: int, tied: bool) -> int:
    """Parameters outside the embedding and head: `total` (tied weights counted once) less
    one vocab × hidden matrix when tied, two when not."""
    return total - vocab * hidden * (1 if tied else 2)


def update_flops(dims: ModelDims, seq_lens: Sequence[int], completion_lens: Sequence[int]) -> int:
    """Model FLOPs of a forward + backward over rows of `seq_lens` tokens, of which
    `completion_lens` are scored: 6·N·ΣS + 6·V·H·ΣC + 12·L·h·d·ΣS² (module docstring)."""
    body = 6 * dims.body_params * sum(seq_lens)
    head = 6 * dims.vocab * dims.hidden * sum(completion_lens)
    attention = 12 * dims.layers * dims.heads * dims.head_dim * sum(n * n for n in seq_lens)
    return body + head + attention


def mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (`peak_tflops` × 1e12)."""
    return flops / seconds / (peak_tflops * 1e12)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    """A number for the table with thousands separators, or "—" when missing."""
    return "—" if value is None else f"{value:,.{digits}f}{suffix}"


TABLE_HEADER = [
    "model",
    "side",
    "sample tok/s",
    "update tok/s",
    "update MFU",
    "s / rollout step",
    "completion tok/s",
    "peak GB",
]
SIDES = {"gspo": "gspo", "hf_generate": "HF generate", "trl": "TRL GRPOTrainer"}


def side_cells(side: str, r: dict[str, Any]) -> list[str]:
    """TABLE_HEADER's figures (all but model and side) for one side's result."""
    if side == "gspo":
        peaks = [r[k]["peak_gb"] for k in ("sample", "old_logprobs", "update")]
        return [
            fmt(r["sample"]["tokens_per_s"]),
            fmt(r["update"]["tokens_per_s"]),
            fmt(100 * r["update"]["mfu"], 1, "%"),
            fmt(r["step_s"], 2),
            fmt(r["step_tokens_per_s"]),
            fmt(None if None in peaks else max(peaks), 1),
        ]
    if side == "hf_generate":
        return [fmt(r["tokens_per_s"]), "—", "—", "—", "—", fmt(r["peak_gb"], 1)]
    return [
        fmt(r["sample_tokens_per_s"]),
        "—",
        "—",
        fmt(r["step_s"], 2),
        fmt(r["tokens_per_s"]),
        fmt(r["peak_gb"], 1),
    ]


def table_rows(models: list[dict[str, Any]]) -> list[list[str]]:
    """One row per (model, side); a skipped or failed one says why in the side column."""
    blank = ["—"] * (len(TABLE_HEADER) - 2)
    rows: list[list[str]] = []
    for m in models:
        if "skipped" in m:
            rows.append([m["model"], "skipped: " + m["skipped"], *blank])
            continue
        for side, label in SIDES.items():
            r = m[side]
            why = next((f"{k}: {r[k]}" for k in ("skipped", "error") if k in r), None)
            cells = [label + " " + why, *blank] if why else [label, *side_cells(side, r)]
            rows.append([m["model"], *cells])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def phase(seconds: float, tokens: float, peak_gb: float | None) -> dict[str, Any]:
    """A timed phase's figures: seconds per repetition, tokens per repetition and per second."""
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "peak_gb": peak_gb,
    }


# --- arguments -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--qwen3-config", type=Path, default=DEFAULT_QWEN3_CONFIG)
    p.add_argument("--smollm2", type=Path, help="a SmolLM2-135M-Instruct model directory")
    p.add_argument("--smollm2-config-only", action="store_true", help="random SmolLM2 weights")
    p.add_argument("--models", default=",".join(MODELS), help="comma list of qwen3, smollm2")
    p.add_argument("--prompts", type=int, default=16, help="distinct prompts per batch")
    p.add_argument("--group", type=int, default=8, help="completions per prompt")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--minibatches", type=int, default=4, help="optimiser steps per batch")
    p.add_argument("--microbatch-tokens", type=int, default=8192, help="0: no split")
    p.add_argument("--warmup", type=int, default=1, help="untimed repetitions per phase")
    p.add_argument("--iters", type=int, default=2, help="timed repetitions per phase")
    p.add_argument("--layers", type=int, help="truncate num_hidden_layers (for speed)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    p.add_argument("--peak-tflops", type=float, default=H200_DENSE_BF16_TFLOPS)
    p.add_argument("--no-trl", action="store_true", help="skip TRL's GRPOTrainer")
    p.add_argument("--allow-cpu", action="store_true", help="run on CPU when there is no GPU")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or any(m not in MODELS for m in args.models):
        p.error(f"--models takes a comma list of {', '.join(MODELS)}")
    sizes = ("prompts", "prompt_tokens", "new_tokens", "minibatches", "iters")
    if any(getattr(args, k) < 1 for k in sizes) or args.warmup < 0 or args.group < 2:
        p.error("sizes and --iters must be at least 1, --group at least 2, --warmup at least 0")
    if (args.prompts * args.group) % args.minibatches:
        p.error("--minibatches must divide --prompts × --group")
    if args.layers is not None and args.layers < 1:
        p.error("--layers must be at least 1")
    return args


# --- models and inputs -----------------------------------------------------------------------


def import_project() -> None:
    """Make `gspo_cli` importable from the checkout's src/ when it is not installed."""
    try:
        importlib.import_module("gspo_cli")
    except ImportError:
        sys.path.insert(0, str(REPO / "src"))


def _from_config(fields: dict[str, Any], layers: int | None, dtype: Any, device: Any) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(fields)
    if layers is not None:
        fields["num_hidden_layers"] = min(layers, fields["num_hidden_layers"])
        fields.pop("max_window_layers", None)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with device:  # initialise the random weights where they will run
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def load_qwen3(args: argparse.Namespace, dtype: Any, device: Any) -> tuple[Any, str]:
    """The Qwen3-0.6B shape with random weights, and where it came from."""
    path = Path(args.qwen3_config)
    if not path.is_file():
        raise FileNotFoundError(f"no Qwen3 config at {path} (pass --qwen3-config)")
    fields = json.loads(path.read_text())
    for key in ("architectures", "torch_dtype", "dtype"):
        fields.pop(key, None)
    return _from_config(fields, args.layers, dtype, device), f"random weights, {path.name}"


def load_smollm2(
    args: argparse.Namespace, dtype: Any, device: Any, scratch: Path
) -> tuple[Any, str]:
    """SmolLM2-135M: random weights (`--smollm2-config-only`), `--smollm2 DIR`, or built
    with ../shared/models/make_smollm2.py into `scratch`; and where it came from."""
    from transformers import AutoModelForCausalLM

    if args.smollm2_config_only:
        return _from_config(SMOLLM2_CONFIG, args.layers, dtype, device), "random weights"
    directory = args.smollm2
    if directory is None:
        if not MAKE_SMOLLM2.is_file():
            raise FileNotFoundError(f"no --smollm2 DIR and no {MAKE_SMOLLM2}")
        directory = scratch / "smollm2"
        built = subprocess.run(
            [sys.executable, str(MAKE_SMOLLM2), str(directory)], capture_output=True, text=True
        )
        if built.returncode:
            tail = (built.stderr.strip().splitlines() or ["failed"])[-1]
            raise RuntimeError(f"make_smollm2.py: {tail} (it needs `pip install gguf`)")
    extra = {} if args.layers is None else {"num_hidden_layers": args.layers}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **extra)
    return model.to(device).eval(), f"pretrained weights, {directory}"


def id_tokenizer(vocab: int, eos_id: int) -> Any:
    """A tokenizer whose words are token ids ("17 4 9"): random-id prompts of an exact
    length for any model, that TRL can use too. EOS doubles as padding."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({str(i): i for i in range(vocab)}, unk_token="0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=str(eos_id), pad_token=str(eos_id), padding_side="left"
    )


def random_prompts(count: int, tokens: int, vocab: int, seed: int) -> list[str]:
    """`count` prompts of `tokens` random ids each, away from the special tokens (at the
    start of SmolLM2's vocabulary and the end of Qwen3's)."""
    import torch

    low, high = min(100, vocab // 4), min(30_000, vocab // 2)
    ids = torch.randint(low, high, (count, tokens), generator=torch.Generator().manual_seed(seed))
    return [" ".join(str(i) for i in row.tolist()) for row in ids]


def model_dims(model: Any) -> ModelDims:
    """The model's FLOP-relevant shape; parameters counted with tied weights once."""
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    heads = c.num_attention_heads
    return ModelDims(
        layers=c.num_hidden_layers,
        hidden=c.hidden_size,
        heads=heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
        vocab=c.vocab_size,
        body_params=body_params(total, c.vocab_size, c.hidden_size, c.tie_word_embeddings),
    )


def eos_id(model: Any) -> int:
    """The model's (first) EOS id."""
    eos = model.config.eos_token_id
    return int(eos[0] if isinstance(eos, list) else eos)


# --- timing ----------------------------------------------------------------------------------


class Clock:
    """Timed repetitions with the device synchronised around each, and peak memory."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 1e9 if self.cuda else None

    def repeat(
        self, fn: Callable[[int], Any], warmup: int, iters: int
    ) -> tuple[list[float], list[Any]]:
        """Seconds and results of `fn(i)` for `iters` calls after `warmup` untimed ones."""
        for i in range(warmup):
            fn(i)
        times, results = [], []
        for i in range(warmup, warmup + iters):
            self.sync()
            start = time.perf_counter()
            results.append(fn(i))
            self.sync()
            times.append(time.perf_counter() - start)
        return times, results

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


# --- gspo ------------------------------------------------------------------------------------


def gspo_sample(
    model: Any, tokenizer: Any, prompts: list[str], args: argparse.Namespace, clock: Clock
) -> tuple[dict[str, Any], Any]:
    """`policy.generate` on the batch: figures, and the last generation (for the update)."""
    from gspo_cli.rollout.sampling import generate

    n = len(prompts)

    def sample(i: int) -> Any:
        seeds = list(range(i * n, (i + 1) * n))
        return generate(
            model, tokenizer, prompts, max_new_tokens=args.new_tokens, temperature=1.0, seeds=seeds
        )

    clock.reset_peak()
    times, gens = clock.repeat(sample, args.warmup, args.iters)
    tokens = mean([float(g.completion_mask.sum()) for g in gens])
    return phase(mean(times), tokens, clock.peak_gb()), gens[-1]


def gspo_old_logprobs(
    model: Any, gen: Any, args: argparse.Namespace, clock: Clock
) -> dict[str, Any]:
    """π_old: `scoring.batched_logprobs` over the batch, no gradients (bf16 policies need it)."""
    from gspo_cli.scoring.completions import batched_logprobs

    def score(i: int) -> None:
        batched_logprobs(model, gen, temperature=1.0, max_tokens=args.microbatch_tokens)

    clock.reset_peak()
    times, _ = clock.repeat(score, args.warmup, args.iters)
    return phase(mean(times), float(gen.attention_mask.sum()), clock.peak_gb())


def _logprob_fn() -> Callable[..., Any]:
    try:
        from gspo_cli.scoring.completions import completion_logprobs
    except ImportError:  # before scoring.py existed
        from gspo_cli.rollout.sampling import completion_logprobs  # type: ignore[attr-defined,no-redef]
    return completion_logprobs


def gspo_update(
    model: Any, gen: Any, args: argparse.Namespace, clock: Clock, dims: ModelDims
) -> dict[str, Any]:
    """`--minibatches` AdamW steps over the batch in a shuffled order, each over
    token-budget micro-batches of `completion_logprobs` forward + backward, as `gspo train`."""
    import torch

    from gspo_cli.scoring import microbatch

    completion_logprobs = _logprob_fn()
    n, t = gen.completion_mask.shape
    p = gen.input_ids.shape[1] - t
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.train()

    def update(i: int) -> None:
        for rows in order.chunk(args.minibatches):
            plans = microbatch.plan(
                gen.attention_mask, gen.completion_mask, rows, args.microbatch_tokens
            )
            for mb in plans:
                ids = microbatch.take(gen.input_ids, mb, p)  # [n_k, P_k + T_k]
                attention = microbatch.take(gen.attention_mask, mb, p)  # [n_k, P_k + T_k]
                logprobs = completion_logprobs(model, ids, attention, mb.completion_len)
                mask = gen.completion_mask[mb.rows, : mb.completion_len]  # [n_k, T_k]
                (-(logprobs * mask).sum() / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    clock.reset_peak()
    times, _ = clock.repeat(update, args.warmup, args.iters)
    peak = clock.peak_gb()
    model.eval()
    seq_lens = gen.attention_mask.sum(dim=1).tolist()
    completion_lens = gen.completion_mask.sum(dim=1).long().tolist()
    flops = update_flops(dims, seq_lens, completion_lens)
    figures = phase(mean(times), float(sum(seq_lens)), peak)
    return figures | {"flops": flops, "mfu": mfu(flops, mean(times), args.peak_tflops)}


def run_gspo(
    model: Any, tokenizer: Any, args: argparse.Namespace, clock: Clock, dims: ModelDims
) -> dict[str, Any]:
    """gspo's three phases of a rollout step on one batch, and the step they add up to."""
    distinct = random_prompts(args.prompts, args.prompt_tokens, dims.vocab, seed=0)
    prompts = [prompt for prompt in distinct for _ in range(args.group)]
    sample, gen = gspo_sample(model, tokenizer, prompts, args, clock)
    old = gspo_old_logprobs(model, gen, args, clock)
    update = gspo_update(model, gen, args, clock, dims)
    clock.free()  # the optimiser's state
    step_s = sample["seconds"] + old["seconds"] + update["seconds"]
    return {
        "sample": sample,
        "old_logprobs": old,
        "update": update,
        "step_s": step_s,
        "step_tokens_per_s": sample["tokens"] / step_s,
    }


# --- HF generate and TRL ---------------------------------------------------------------------


def run_hf_generate(
    model: Any, tokenizer: Any, args: argparse.Namespace, clock: Clock, vocab: int
) -> dict[str, Any]:
    """transformers' `generate` on the same batch at temperature 1, top-k and top-p off."""
    import torch

    from gspo_cli.rollout.sampling import completion_mask, eos_ids

    distinct = random_prompts(args.prompts, args.prompt_tokens, vocab, seed=0)
    prompts = [prompt for prompt in distinct for _ in range(args.group)]
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.to(device) for k, v in enc.items()}
    stops = eos_ids(model, tokenizer)

    def sample(i: int) -> float:
        torch.manual_seed(i)
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stops,
        )
        return float(completion_mask(out[:, enc["input_ids"].shape[1] :], stops).sum())

    clock.reset_peak()
    times, tokens = clock.repeat(sample, args.warmup, args.iters)
    return phase(mean(times), mean(tokens), clock.peak_gb())


def trl_config(args: argparse.Namespace, output_dir: str, cpu: bool) -> Any:
    """TRL's documented GSPO setting on our batch shape; the model is already in its dtype,
    so no autocast; no gradient checkpointing (gspo uses none either)."""
    from trl import GRPOConfig

    rows = args.prompts * args.group
    return GRPOConfig(
        output_dir=output_dir,
        importance_sampling_level="sequence",
        loss_type="grpo",
        beta=0.0,
        epsilon=3e-4,
        epsilon_high=4e-4,
        num_generations=args.group,
        steps_per_generation=args.minibatches,
        per_device_train_batch_size=rows // args.minibatches,
        gradient_accumulation_steps=1,
        max_steps=(args.warmup + args.iters) * args.minibatches,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        shuffle_dataset=False,
        optim="adamw_torch",
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        use_cpu=cpu,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _trl_laps(clock: Clock, every: int) -> tuple[Any, list[float]]:
    """A TrainerCallback that records the synchronised time at train begin and after every
    `every`-th optimiser step (one rollout step), and the list it appends to."""
    from transformers import TrainerCallback

    marks: list[float] = []

    class Laps(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock.sync()
            marks.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step % every == 0:
                clock.sync()
                marks.append(time.perf_counter())

    return Laps(), marks


def _timed(clock: Clock, fn: Callable[..., Any], seconds: list[float]) -> Callable[..., Any]:
    """`fn`, appending each call's synchronised wall seconds to `seconds`."""

    def wrapper(*a: Any, **kw: Any) -> Any:
        clock.sync()
        start = time.perf_counter()
        out = fn(*a, **kw)
        clock.sync()
        seconds.append(time.perf_counter() - start)
        return out

    return wrapper


def run_trl(
    model: Any, tokenizer: Any, args: argparse.Namespace, clock: Clock, vocab: int
) -> dict[str, Any]:
    """TRL's GRPOTrainer for `--warmup + --iters` rollout steps on batches of our shape:
    seconds per rollout step, completion tokens / s, and its sampling's tokens / s."""
    try:
        from datasets import Dataset
        from trl import GRPOTrainer
    except Exception as exc:  # not installed, or a version clash: a note, not a failure
        return {"skipped": f"trl does not import ({type(exc).__name__}: {exc})"}
    steps = args.warmup + args.iters
    prompts = random_prompts(args.prompts * steps, args.prompt_tokens, vocab, seed=1)
    tokens: list[int] = []

    def reward(completion_ids: list[list[int]], **_: Any) -> list[float]:
        tokens.append(sum(len(ids) for ids in completion_ids))
        return [float(ids[-1] % 2) if ids else 0.0 for ids in completion_ids]

    laps, marks = _trl_laps(clock, args.minibatches)
    sample_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-trl-") as tmp:
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward],
            args=trl_config(args, tmp, not clock.cuda),
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
            callbacks=[laps],
        )
        sampling = _timed(clock, trainer._generate_single_turn, sample_s)
        trainer._generate_single_turn = sampling  # type: ignore[method-assign]  # timing only
        clock.reset_peak()
        trainer.train()
        peak = clock.peak_gb()
        del trainer
    clock.free()
    step_s = [b - a for a, b in itertools.pairwise(marks)][args.warmup :]
    timed_tokens = tokens[args.warmup : args.warmup + len(step_s)]
    return {
        "step_s": mean(step_s),
        "tokens": mean(timed_tokens),
        "tokens_per_s": sum(timed_tokens) / sum(step_s),
        "sample_s": mean(sample_s[args.warmup :]),
        "sample_tokens_per_s": sum(timed_tokens) / sum(sample_s[args.warmup :]),
        "peak_gb": peak,
        "steps_timed": len(step_s),
    }


# --- driver ----------------------------------------------------------------------------------


def load_model(
    name: str, args: argparse.Namespace, dtype: Any, device: Any, scratch: Path
) -> tuple[Any, str]:
    if name == "qwen3":
        return load_qwen3(args, dtype, device)
    return load_smollm2(args, dtype, device, scratch)


def guarded(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`fn()`, or {"error": ...} with the traceback printed, so one failure keeps the rest."""
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        print(f"gpu_bench: {label} failed: {type(exc).__name__}: {exc}", flush=True)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def bench_model(
    name: str, args: argparse.Namespace, dtype: Any, device: Any, scratch: Path
) -> dict[str, Any]:
    """Every side's figures for one model, or why it was skipped."""
    clock = Clock(device)
    try:
        model, source = load_model(name, args, dtype, device, scratch)
    except Exception as exc:  # no config, no GGUF tooling, ...: a note, then the next model
        print(f"gpu_bench: skipping {name}: {exc}", flush=True)
        return {"model": name, "skipped": str(exc)}
    dims = model_dims(model)
    print(f"gpu_bench: {name} ({source}), {dims.layers} layers", flush=True)
    result = {"model": name, "source": source, "dims": asdict(dims)}
    result |= run_sides(name, model, args, clock, dims)
    del model
    clock.free()
    return result


def run_sides(
    name: str, model: Any, args: argparse.Namespace, clock: Clock, dims: ModelDims
) -> dict[str, Any]:
    """gspo, HF generate and TRL (unless `--no-trl`) on `model`, each guarded."""
    tokenizer = id_tokenizer(dims.vocab, eos_id(model))
    out: dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}
    out["gspo"] = guarded(f"{name} gspo", lambda: run_gspo(model, tokenizer, args, clock, dims))
    out["hf_generate"] = guarded(
        f"{name} HF generate", lambda: run_hf_generate(model, tokenizer, args, clock, dims.vocab)
    )
    if args.no_trl:
        out["trl"] = {"skipped": "--no-trl"}
    else:
        out["trl"] = guarded(
            f"{name} TRL", lambda: run_trl(model, tokenizer, args, clock, dims.vocab)
        )
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "accelerate"):
        try:
            out[package] = importlib.import_module(package).__version__
        except Exception:
            out[package] = "absent"
    return out


def write_report(args: argparse.Namespace, device: Any, models: list[dict[str, Any]]) -> Path:
    """The JSON report under `--out`, and the table on stdout."""
    import torch

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = {
        "created": stamp,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(pick_dtype(args, device)).removeprefix("torch."),
        "peak_tflops": args.peak_tflops,
        "versions": versions(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": models,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path: Path = args.out / f"gpu-{stamp}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown_table(TABLE_HEADER, table_rows(models)))
    print(f"gpu_bench: wrote {path}")
    return path


def pick_dtype(args: argparse.Namespace, device: Any) -> Any:
    import torch

    if args.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, args.dtype)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_bench: no CUDA device found; nothing measured (--allow-cpu runs on CPU)")
        return 0
    import_project()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as scratch:
        models = [
            bench_model(name, args, pick_dtype(args, device), device, Path(scratch))
            for name in args.models
        ]
    write_report(args, device, models)
    failed = any("error" in m.get(side, {}) for m in models for side in SIDES)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
