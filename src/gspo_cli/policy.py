"""The policy model: loading, batched generation and per-token log-probabilities.

Everything that touches transformers' model API lives here, so a rename in a new
transformers release changes one file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gspo_cli import microbatch
from gspo_cli.errors import ModelError
from gspo_cli.logprobs import DEFAULT_CHUNK_TOKENS, token_logprobs
from gspo_cli.tiny import EMBEDDED_MODELS, build_tokenizer, ensure_tiny_model, tiny_model_dir


@dataclass(frozen=True)
class Generation:
    """A batch of sampled completions, left-padded prompts followed by completions."""

    input_ids: torch.Tensor  # [N, P+T] prompt (left-padded) + completion (right-padded)
    attention_mask: torch.Tensor  # [N, P+T] 1 on real prompt and completion tokens
    completion_mask: torch.Tensor  # [N, T] float, 1.0 up to and including the first EOS
    truncated: torch.Tensor  # [N] bool, no EOS within max_new_tokens
    texts: list[str]  # decoded completions, special tokens removed

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.completion_mask.shape[1] :]  # [N, T]


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA with bf16 support and float32 otherwise."""
    if requested == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        requested
    ]


def check_model_source(name: str) -> str:
    """The name as a local directory or hub id; a local-looking path must exist."""
    if name in EMBEDDED_MODELS:
        return name
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise ModelError(
            f"model.name {name!r} looks like a local path but no such directory exists; "
            "point it at a Hugging Face model directory (with config.json) or use a hub id"
        )
    return str(Path(name).expanduser()) if looks_local else name


def resolve_model_path(name: str, announce: Callable[[str], None]) -> str:
    """The embedded default's cached directory, or the name as given (hub id or local path)."""
    if name in EMBEDDED_MODELS:
        return str(ensure_tiny_model(announce, name))
    return check_model_source(name)


def _fix_tokenizer(tokenizer: Any, name: str) -> Any:
    """Pad on the left (generation), with EOS when there is no pad token; require an EOS."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:  # many causal LMs ship without one; EOS is safe with masks
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelError(f"tokenizer of {name!r} has no EOS token; completions could never stop")
    return tokenizer


def _load_error(name: str, exc: Exception) -> ModelError:
    first = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    return ModelError(
        f"cannot load model {name!r}: {first}. If the hub is unreachable (offline), "
        "download it elsewhere and set model.name to its local directory"
    )


def load_tokenizer(name: str, announce: Callable[[str], None]) -> Any:
    """The tokenizer of model `name` alone, without loading (or, for the embedded default,
    building and warm-starting) the model: what preparing data needs."""
    from transformers import AutoTokenizer

    if name in EMBEDDED_MODELS and not (tiny_model_dir(name) / "config.json").is_file():
        return _fix_tokenizer(build_tokenizer(), name)
    path = resolve_model_path(name, announce)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from exc
    return _fix_tokenizer(tokenizer, name)


def load_policy(
    name: str, dtype: str, device: torch.device, announce: Callable[[str], None]
) -> tuple[Any, Any]:
    """Load (model, tokenizer) by hub id or local path; the tokenizer pads on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(name, announce)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype, device))
    except (OSError, ValueError) as exc:
        raise _load_error(name, exc) from exc
    return model.to(device), _fix_tokenizer(tokenizer, name)


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a completion (the tokenizer's EOS and the model's)."""
    ids = {int(tokenizer.eos_token_id)}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    return sorted(ids)


def completion_mask(completion_ids: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1.0 on each completion's tokens up to and including its first stop token."""
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))
    # Stops strictly before position t: a token is real if none came earlier.
    stops_before = torch.cumsum(is_stop.int(), dim=1) - is_stop.int()  # [N, T]
    return (stops_before == 0).float()  # [N, T]


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set whose probability reaches `top_p`
    (transformers' `TopPLogitsWarper` rule; the most likely token always stays)."""
    ordered, order = torch.sort(scores, descending=False)  # [N, V] ascending
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)  # [N, V]
    drop_sorted = cumulative <= (1 - top_p)  # [N, V]
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)  # [N, V] back in vocabulary order
    return scores.masked_fill(drop, -math.inf)


class RowSampler:
    """Draws each row's next token from softmax(logits / T) (top-p filtered) with the row's
    own generator, by the Gumbel-max trick: argmax(logits / T + Gumbel noise) is an exact
    sample of that softmax.

    Used as a transformers logits processor under greedy decoding. Row i's noise at
    decoding position t is the t-th draw of a generator seeded with `seeds[i]`, so a row's
    completion does not depend on which other rows share its batch: split a batch across
    processes with the same per-row seeds and each row samples exactly what it would have in
    one process. Noise is float64, so a uniform draw of exactly 0 (which would make a
    filtered token win) has probability 2^-53 rather than float32's 2^-24 per entry.
    """

    def __init__(
        self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device
    ) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature = temperature
        self.top_p = top_p
        self.device = device

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.double() / self.temperature  # [N, V]
        if self.top_p < 1:
            scores = top_p_filter(scores, self.top_p)  # [N, V]
        v = scores.shape[1]
        uniform = torch.stack(
            [
                torch.rand(v, generator=g, dtype=torch.float64, device=self.device)
                for g in self.generators
            ]
        )  # [N, V] in [0, 1)
        return scores - torch.log(-torch.log(uniform))  # [N, V] + Gumbel(0, 1)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    seeds: Sequence[int] | None = None,
) -> Generation:
    """Sample (or greedily decode) one completion per prompt with a KV cache.

    Repeat a prompt G times in `prompts` to get a group. The sampling distribution is the
    model's softmax at `temperature` (top-k off; top-p when < 1), which is what
    `completion_logprobs` scores. Row i is sampled with its own generator seeded by
    `seeds[i]` (see `RowSampler`); without `seeds`, they are drawn from torch's global RNG.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    stop_ids = eos_ids(model, tokenizer)
    # Decoding is greedy either way: sampling is the Gumbel-max argmax of `RowSampler`.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    processors = LogitsProcessorList()
    if not greedy:
        if seeds is None:
            seeds = torch.randint(2**62, (len(prompts),)).tolist()
        processors.append(RowSampler(seeds, temperature, top_p, device))
    was_training = model.training
    model.eval()
    out = model.generate(
        input_ids=enc["input_ids"].to(device),
        attention_mask=enc["attention_mask"].to(device),
        generation_config=config,
        logits_processor=processors,
    )  # [N, P+T'] with T' <= max_new_tokens
    model.train(was_training)
    prompt_len = enc["input_ids"].shape[1]
    completion_ids = out[:, prompt_len:]  # [N, T']
    mask = completion_mask(completion_ids, stop_ids)  # [N, T']
    ended = torch.isin(completion_ids, torch.tensor(stop_ids, device=device)).any(dim=1)  # [N]
    attention = torch.cat([enc["attention_mask"].to(device), mask.long()], dim=1)  # [N, P+T']
    # Decode only each completion's own tokens: anything after its stop token becomes padding.
    kept = torch.where(mask.bool(), completion_ids, tokenizer.pad_token_id)  # [N, T']
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    return Generation(
        input_ids=out,
        attention_mask=attention,
        completion_mask=mask,
        truncated=~ended,
        texts=texts,
    )


def _plain_linear_head(model: Any) -> Any | None:
    """The output head if it is a bias-free linear layer with nothing after it, else None."""
    head = model.get_output_embeddings()
    config = model.config
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    return head


class LogProbModel(torch.nn.Module):
    """A causal LM as a module whose forward returns completion log-probs `[N, T]`.

    `completion_logprobs` runs the decoder stack (`base_model`) and uses the output head's
    weight itself, outside the causal LM's own forward. Under FSDP2 this wrapper is the root
    sharded module: calling it runs the root's hooks, which gather the embedding, final norm
    and head before the forward and reduce-scatter their gradients after the backward.
    Without FSDP it is a thin shell with the same numbers. `.model` is the causal LM (for
    generation and saving).
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_len: int,
        temperature: float = 1.0,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    ) -> torch.Tensor:
        logprobs = _completion_logprobs(
            self.model, input_ids, attention_mask, completion_len, temperature, chunk_tokens
        )  # [N, T]
        return logprobs.clone()  # not a view: FSDP2 hooks the output for backward


def causal_lm(model: Any) -> Any:
    """The causal LM inside a `LogProbModel`, or `model` itself."""
    return model.model if isinstance(model, LogProbModel) else model


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float = 1.0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """log π(y_t | x, y_<t) of each completion token, at the sampling temperature -> [N, T].

    `model` is a causal LM or a `LogProbModel` (called through its forward, so FSDP2's hooks
    run). For the usual bias-free linear head the logits are never materialised for all
    tokens at once (`logprobs.token_logprobs`, chunked); other heads fall back to full logits
    of the last T+1 positions. Positions come from the attention mask so left padding does
    not shift them.
    """
    if isinstance(model, LogProbModel):
        out: torch.Tensor = model(
            input_ids, attention_mask, completion_len, temperature, chunk_tokens
        )  # [N, T]
        return out
    return _completion_logprobs(
        model, input_ids, attention_mask, completion_len, temperature, chunk_tokens
    )


def _completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float,
    chunk_tokens: int,
) -> torch.Tensor:
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [N, P+T]
    targets = input_ids[:, -completion_len:]  # [N, T]
    head = _plain_linear_head(model)
    if head is not None:
        hidden = model.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state[:, -completion_len - 1 : -1]  # [N, T, H]
        return token_logprobs(
            hidden, head.weight, targets, temperature=temperature, chunk_tokens=chunk_tokens
        )  # [N, T]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=completion_len + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]  # [N, T, V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    logprobs = torch.log_softmax(logits, dim=-1)  # [N, T, V]
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N, T]


@torch.no_grad()
def batched_logprobs(
    model: Any,
    gen: Generation,
    *,
    temperature: float,
    max_tokens: int,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    around: Callable[[microbatch.MicroBatch], AbstractContextManager[Any]] | None = None,
) -> torch.Tensor:
    """`completion_logprobs` of every row of a generation, in token-budget micro-batches,
    without gradients (π_old and the reference) -> [N, T], 0 on padding. `around(mb)`, when
    given, is a context open during micro-batch `mb`'s forward (e.g. recording MoE routing)."""
    n, t = gen.completion_mask.shape
    p = gen.input_ids.shape[1] - t
    out = torch.zeros(n, t, device=gen.input_ids.device)  # [N, T]
    for mb in microbatch.plan(gen.attention_mask, gen.completion_mask, torch.arange(n), max_tokens):
        ids = microbatch.take(gen.input_ids, mb, p)  # [n_k, P_k + T_k]
        attn = microbatch.take(gen.attention_mask, mb, p)  # [n_k, P_k + T_k]
        with around(mb) if around is not None else nullcontext():
            lp = completion_logprobs(
                model, ids, attn, mb.completion_len, temperature, chunk_tokens
            )  # [n_k, T_k]
        out[mb.rows, : mb.completion_len] = lp.float()  # [n_k, T_k]
    return out
