"""Shared fixtures: offline environment and a tiny untrained Qwen3 built from config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads: OpenMP's busy-wait makes in-process CPU work (the tiny model's warm start)
# many times slower when other processes share the cores. The CLI sets the same default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
# The real GSM8K copy next to the checkout (../shared/data/gsm8k); the product never assumes it.
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The local GSM8K folder (train.jsonl 7,473 rows, test.jsonl 1,319 rows)."""
    if not (GSM8K_DIR / "test.jsonl").is_file():
        pytest.skip(f"no GSM8K copy at {GSM8K_DIR}")
    return GSM8K_DIR


SMOLLM2_SCRIPT = REPO.parent / "shared" / "models" / "make_smollm2.py"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct (pretrained, float32) as an ordinary Hugging Face directory, built
    once per test session by ../shared/models/make_smollm2.py (~25 s); skipped without it."""
    import importlib.util
    import subprocess
    import sys

    if not SMOLLM2_SCRIPT.is_file():
        pytest.skip(f"no {SMOLLM2_SCRIPT}")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2's weights need gguf (in the dev extra)")
    path = tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"
    subprocess.run(
        [sys.executable, str(SMOLLM2_SCRIPT), str(path)], check=True, capture_output=True
    )
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Qwen3 + character tokenizer saved as a Hugging Face directory."""
    from gspo_cli.models.tiny import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id, seed=0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny Qwen3-MoE (8 experts, top-2) + character tokenizer, as a directory."""
    from gspo_cli.models.tiny import build_moe_model, build_tokenizer

    path = tmp_path_factory.mktemp("tiny-moe")
    tokenizer = build_tokenizer()
    model = build_moe_model(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


QWEN_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@pytest.fixture(scope="session")
def qwen_style_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local model directory: tiny Qwen3 + char tokenizer with a Qwen-style chat template
    (<|im_start|>/<|im_end|> turns, as Qwen's own template renders a single user turn)."""
    from gspo_cli.models.tiny import build_model, build_tokenizer

    path = tmp_path_factory.mktemp("qwen-style")
    tokenizer = build_tokenizer()
    tokenizer.chat_template = QWEN_TEMPLATE
    model = build_model(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Never read or write the user's ~/.cache/gspo from tests. Session-scoped, so it is in
    place before module-scoped fixtures (which build the tiny model or train a run) too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GSPO_CACHE", str(session_cache(tmp_path_factory)))
        yield


def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test session's GSPO_CACHE: shared by every test, never the user's."""
    return tmp_path_factory.getbasetemp() / "gspo-cache"


@pytest.fixture(scope="session")
def warm_tiny(_isolated_cache: None) -> Path:
    """The embedded default, built and warm-started once (about 35 s) into the session cache."""
    from gspo_cli.models.tiny import ensure_tiny_model

    return ensure_tiny_model(lambda _: None)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module: the tiny model's matrices are too small for more to
    help, and on shared cores extra threads only add contention."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
