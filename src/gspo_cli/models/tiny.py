"""The embedded models: a tiny Qwen3 (the default) and a tiny Qwen3-MoE, each with a
character tokenizer, built in code.

Nothing here touches a hub. `ensure_tiny_model(cache_dir)` builds the model from a
`Qwen3Config`, gives it a short supervised warm start on the synthetic addition task
(so the starting policy already gets some answers right and RL has a signal), and saves
it as an ordinary Hugging Face directory that `AutoModelForCausalLM.from_pretrained`
loads. The first call does the work (about a minute on 2 CPU cores); later calls reuse it.
`tiny-qwen3-moe` is built, warm-started and cached the same way, in its own directory.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gspo_cli.base.storage import file_hashes, hash_mismatch, staged_dir
from gspo_cli.data import Example
from gspo_cli.rollout.greedy import greedy_accuracy
from gspo_cli.rundir.paths import embedded_model_dir

TINY_MODEL_NAME = "tiny-qwen3"
TINY_MOE_NAME = "tiny-qwen3-moe"
# Bump when the architecture, tokenizer or warm start change: the cache key includes it.
TINY_VERSION = "1"
TINY_MOE_VERSION = "1"
EMBEDDED_MODELS = {TINY_MODEL_NAME: TINY_VERSION, TINY_MOE_NAME: TINY_MOE_VERSION}

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
_CHARS = string.digits + string.ascii_lowercase + "+-*/=()#,.?: "
_VOCAB = [PAD, EOS, UNK, *_CHARS]  # the character tokenizer's tokens, in id order

# Warm start: supervised next-token loss on the answer tokens of the addition task.
WARM_START_STEPS = 800  # an upper bound; it stops at the target accuracy
WARM_START_TARGET = 0.25
WARM_START_BATCH = 128
WARM_START_LR = 1e-3
WARM_START_SEED = 1234


def build_tokenizer() -> Any:
    """A character-level fast tokenizer (digits, lower-case letters, a little punctuation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(_VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


def _shape(pad_id: int, eos_id: int) -> dict[str, Any]:
    """What the dense and the MoE tiny models share: widths, attention, depth, ids."""
    return {
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
        "bos_token_id": eos_id,
        "hidden_size": 128,
        "intermediate_size": 384,
    }


# In every MoE layer 8 experts of which each token uses 2 (top-2, weights renormalised over
# the two, as in Qwen3-30B-A3B).
_MOE = {
    "moe_intermediate_size": 128,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "norm_topk_prob": True,
}


def tiny_config(name: str = TINY_MODEL_NAME) -> Any:
    """The embedded model's config (no weights): what its memory estimate and context read."""
    from transformers import Qwen3Config, Qwen3MoeConfig

    shape = {
        "vocab_size": len(_VOCAB),
        **_shape(_VOCAB.index(PAD), _VOCAB.index(EOS)),
    }
    return Qwen3MoeConfig(**shape, **_MOE) if name == TINY_MOE_NAME else Qwen3Config(**shape)


def build_model(vocab_size: int, pad_id: int, eos_id: int, seed: int = 0) -> Any:
    """A ~0.8M-parameter Qwen3ForCausalLM from config (random weights)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=vocab_size, **_shape(pad_id, eos_id))
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config)


def build_moe_model(vocab_size: int, pad_id: int, eos_id: int, seed: int = 0) -> Any:
    """A ~1.8M-parameter Qwen3MoeForCausalLM from config (random weights): the dense tiny
    model's attention, and in every layer 8 experts of which each token uses 2 (top-2, weights
    renormalised over the two, as in Qwen3-30B-A3B)."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(vocab_size=vocab_size, **_shape(pad_id, eos_id), **_MOE)
    torch.manual_seed(seed)
    return Qwen3MoeForCausalLM(config)


def _encode_answers(tokenizer: Any, examples: list[tuple[str, str]]) -> tuple[Any, Any, Any]:
    """Right-padded `prompt + answer + EOS` ids, attention mask and labels on the answer only."""
    import torch

    rows = []
    for prompt, answer in examples:
        p = tokenizer(prompt)["input_ids"]
        a = [*tokenizer(answer)["input_ids"], tokenizer.eos_token_id]
        rows.append((p, a))
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)  # [B, L]
    attn = torch.zeros((len(rows), width), dtype=torch.long)  # [B, L]
    labels = torch.full((len(rows), width), -100)  # [B, L]
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        attn[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(a)
    return ids, attn, labels


def warm_start(model: Any, tokenizer: Any, target_accuracy: float) -> tuple[int, float]:
    """Supervised steps on addition answers until greedy accuracy on a validation slice of the
    *train* split reaches `target_accuracy` (the held-out test split is never seen).

    Returns (steps taken, validation accuracy). Stopping on accuracy rather than after a fixed
    count keeps the starting policy at a similar level whatever the machine's kernels do.
    """
    import torch

    from gspo_cli.data import addition_examples
    from gspo_cli.rewards import exact

    rng = random.Random(WARM_START_SEED)
    train = [(e.prompt, e.reference) for e in addition_examples("train")]
    rng.shuffle(train)
    validation, pool = train[:256], train[256:]
    val_examples = [Example(p, r) for p, r in validation]
    optimiser = torch.optim.AdamW(model.parameters(), lr=WARM_START_LR)
    # A mixture of experts also gets its load-balancing loss, so no expert is left unused.
    balance = {"output_router_logits": True} if getattr(model.config, "num_experts", 0) else {}
    accuracy = 0.0
    for step in range(1, WARM_START_STEPS + 1):
        model.train()
        ids, attn, labels = _encode_answers(tokenizer, rng.sample(pool, WARM_START_BATCH))
        loss = model(
            input_ids=ids, attention_mask=attn, labels=labels, use_cache=False, **balance
        ).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        if step % 10 == 0:
            accuracy = greedy_accuracy(model, tokenizer, val_examples, exact, max_new_tokens=5)
            if accuracy >= target_accuracy:
                return step, accuracy
    return WARM_START_STEPS, accuracy


def tiny_model_dir(name: str = TINY_MODEL_NAME) -> Path:
    """The cached warm-started embedded model's directory (it may not exist yet)."""
    return embedded_model_dir(name, EMBEDDED_MODELS[name])


HASHES_FILE = "hashes.json"  # written last: every other file's sha256


def cache_problem(directory: Path) -> str | None:
    """Why a cached embedded model cannot be used as it is, or None when it is intact."""
    try:
        hashes = json.loads((directory / HASHES_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "incomplete" if directory.exists() else "missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"damaged ({HASHES_FILE} is unreadable)"
    if not isinstance(hashes, dict):
        return f"damaged ({HASHES_FILE} is not a table)"
    mismatch = hash_mismatch(directory, hashes)
    return f"damaged ({mismatch})" if mismatch else None


def ensure_tiny_model(announce: Callable[[str], None], name: str = TINY_MODEL_NAME) -> Path:
    """Build, warm-start and cache an embedded model once; return its Hugging Face directory.
    A cache whose files do not match their hashes (or that an older gspo left without
    them) is rebuilt, and said so."""
    import torch

    target = tiny_model_dir(name)
    problem = cache_problem(target)
    if problem is None:
        return target
    announce(
        f"The cached {name} model in {target} is {problem}: rebuilding it (about a minute)"
        if problem != "missing"
        else f"First run: building the embedded {name} model and warm-starting it on "
        f"synthetic addition (about a minute); cached in {target}"
    )
    tokenizer = build_tokenizer()
    build = build_moe_model if name == TINY_MOE_NAME else build_model
    model = build(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(WARM_START_SEED)
        steps, accuracy = warm_start(model, tokenizer, WARM_START_TARGET)
    with staged_dir(target, f"the {name} model cache") as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "warm_start.txt").write_text(
            f"steps={steps} validation_accuracy={accuracy:.4f}\n", encoding="utf-8"
        )
        hashes = json.dumps(file_hashes(staging), indent=1)
        (staging / HASHES_FILE).write_text(hashes, encoding="utf-8")
    return target
