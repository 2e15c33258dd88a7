"""Reward functions, registered by name, and their safe application to a batch.

Every reward is a pure function `fn(completion: str, reference: str) -> float`; `get(name)`
returns a registered one, or a user's own written as `package.module:function`. A recipe
may combine several with weights (`combine`); the first one is the *checker* that decides
whether an answer is correct (accuracy, pass@k). `score` applies a reward to a batch and
refuses anything that raises or is not a finite number, naming the reward and the input:
a broken reward stops the run rather than silently scoring 0.

| name | 1.0 when |
|---|---|
| `exact` | the stripped completion equals the stripped reference |
| `gsm8k` | the last `#### <number>` equals the reference number (strict) |
| `gsm8k_flexible` | the completion's last number equals the reference number |
| `math_boxed` | the last balanced `\\boxed{}` equals the reference after normalisation |
| `countdown` | the last `<answer>` expression uses each number once and hits the target |
| `format_gsm8k`, `format_boxed`, `format_answer_tag` | the answer is stated in that form |
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence

from gspo_cli.base.errors import RewardError, UserError
from gspo_cli.rewards.countdown import countdown, extract_answer_tag, parse_reference, solve
from gspo_cli.rewards.format import format_answer_tag, format_boxed, format_gsm8k
from gspo_cli.rewards.math_answers import (
    extract_boxed,
    extract_gsm8k,
    extract_last_number,
    gsm8k,
    gsm8k_flexible,
    math_boxed,
)

RewardFn = Callable[[str, str], float]
Extractor = Callable[[str], str | None]
Terms = Sequence[tuple[str, float]]  # (reward name, weight)


def exact(completion: str, reference: str) -> float:
    """1.0 when the completion, stripped of surrounding whitespace, equals the reference.

    >>> exact(" 57", "57"), exact("57 apples", "57")
    (1.0, 0.0)
    """
    return 1.0 if completion.strip() == reference.strip() else 0.0


def _stripped(completion: str) -> str | None:
    return completion.strip()


REGISTRY: dict[str, RewardFn] = {
    "exact": exact,
    "gsm8k": gsm8k,
    "gsm8k_flexible": gsm8k_flexible,
    "math_boxed": math_boxed,
    "countdown": countdown,
    "format_gsm8k": format_gsm8k,
    "format_boxed": format_boxed,
    "format_answer_tag": format_answer_tag,
}

# The answer each checker reads from a completion: shown in samples.jsonl and voted on by maj@N.
EXTRACTORS: dict[str, Extractor] = {
    "exact": _stripped,
    "gsm8k": extract_gsm8k,
    "gsm8k_flexible": extract_last_number,
    "math_boxed": extract_boxed,
    "countdown": extract_answer_tag,
}


# How each registered reward expects an answer written in a completion (`{}`: the answer):
# `gspo check` writes a correct answer this way and expects the checker to give it 1.0.
ANSWER_FORMS: dict[str, str] = {
    "gsm8k": "#### {}",
    "math_boxed": "\\boxed{{{}}}",
    "countdown": "<answer>{}</answer>",
    "format_gsm8k": "#### {}",
    "format_boxed": "\\boxed{{{}}}",
    "format_answer_tag": "<answer>{}</answer>",
}


def correct_completion(name: str, reference: str, answer: str | None = None) -> str | None:
    """A completion reward `name` should count as correct for `reference`: the answer (the
    reference; for countdown a solution found by search) in the form the reward reads, the
    reference itself for a reward without a known form (a user's). With `answer` given, that
    text in the same form instead (`""`: the form with the answer removed). None when no
    correct answer can be built (a countdown problem without a solution).

    >>> correct_completion("gsm8k", "72"), correct_completion("gsm8k", "72", answer="")
    ('#### 72', '#### ')
    >>> correct_completion("countdown", '{"numbers": [3, 5, 7], "target": 22}')
    '<answer>(7 + (3 * 5))</answer>'
    """
    if answer is None and name == "countdown":
        try:
            answer = solve(*parse_reference(reference))
        except (ValueError, KeyError, TypeError):
            return None
        if answer is None:
            return None
    return ANSWER_FORMS.get(name, "{}").format(reference if answer is None else answer)


def _import_reward(spec: str) -> RewardFn:
    """A user's reward `package.module:function`, imported from the installed packages or the
    current directory; a UserError saying what is wrong otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UserError(f"reward {spec!r}: write a user reward as package.module:function")
    if os.getcwd() not in sys.path:  # `gspo` (a console script) does not put it there itself
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"reward {spec!r}: cannot import module {module_name!r} ({exc}); make it importable "
            "from the current directory or install it"
        ) from None
    except Exception as exc:
        raise UserError(
            f"reward {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    fn = getattr(module, attribute, None)
    if not callable(fn):
        what = "has no" if fn is None else "has a non-callable"
        raise UserError(
            f"reward {spec!r}: module {module_name!r} {what} {attribute!r}; name a function "
            "fn(completion: str, reference: str) -> float"
        )
    problem = origin_problem(fn, spec) or signature_problem(fn, spec)
    if problem is not None:
        raise UserError(problem)
    return fn  # type: ignore[no-any-return]


# The libraries gspo itself runs on: their functions act on files, models and tensors
# (`torch:save` would write a file named after each reference), so none is a reward.
_LIBRARIES = frozenset(
    {
        "torch",
        "transformers",
        "datasets",
        "safetensors",
        "huggingface_hub",
        "tokenizers",
        "numpy",
        "pyarrow",
        "typer",
        "click",
        "rich",
        "yaml",
        "pydantic",
        "pydantic_core",
        "matplotlib",
    }
)


def origin_problem(fn: Callable[..., object], name: str) -> str | None:
    """Why `fn` is not a user's reward function: it is not a plain Python function (a class, a
    builtin, a partial) or it comes from the standard library or a library gspo runs on, whose
    functions (`shutil.rmtree`, `torch.save`) act on their arguments; None when it is a
    function of the user's own code.

    >>> import shutil; origin_problem(shutil.rmtree, "shutil:rmtree") is not None
    True
    >>> origin_problem(exact, "gspo_cli.rewards:exact") is None
    True
    """
    if not inspect.isfunction(fn):
        return (
            f"reward {name!r} is a {type(fn).__name__}, not a plain Python function; a reward "
            "is a def fn(completion: str, reference: str) -> float in your own module"
        )
    module = getattr(fn, "__module__", None) or ""
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        source = "the standard library"
    elif top in _LIBRARIES or (top == "gspo_cli" and not module.startswith("gspo_cli.rewards")):
        source = f"{top}, a library gspo runs on"
    else:
        return None
    return (
        f"reward {name!r} is {module}.{fn.__qualname__} from {source}, not a reward: a reward "
        "is called on every completion and reference, so name a def fn(completion: str, "
        "reference: str) -> float of your own module"
    )


def signature_problem(fn: Callable[..., object], name: str) -> str | None:
    """Why `fn` cannot be called as a reward, `fn(completion, reference)`; None when it can
    (or has no signature to inspect, as some builtins)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind("completion", "reference")
    except TypeError:
        called = getattr(fn, "__name__", "fn")
        return (
            f"reward {name!r}: {called}{signature} cannot be called as fn(completion, "
            f"reference); a reward is called once per completion with two strings, so write "
            f"it as def {called}(completion: str, reference: str) -> float"
        )
    return None


def get(name: str) -> RewardFn:
    """The registered reward called `name`, or a user's `package.module:function`."""
    if name in REGISTRY:
        return REGISTRY[name]
    if ":" in name:
        return _import_reward(name)
    known = ", ".join(sorted(REGISTRY))
    raise UserError(
        f"unknown reward {name!r}: known rewards are {known}, or name your own function "
        "as package.module:function"
    )


def extractor(name: str) -> Extractor:
    """How reward `name` reads the answer from a completion (the stripped text when it has no
    extractor of its own, e.g. a user's reward)."""
    return EXTRACTORS.get(name, _stripped)


def label(terms: Terms) -> str:
    """A short name for a reward spec: `gsm8k`, or `gsm8k + 0.1*format_gsm8k`."""
    return " + ".join(name if weight == 1 else f"{weight:g}*{name}" for name, weight in terms)


def call(fn: RewardFn, name: str, completion: str, reference: str) -> float:
    """`fn(completion, reference)` as a float; a RewardError naming the reward and the input
    when it raises or returns something that is not a finite number."""
    where = f"on completion={shown(completion)}, reference={shown(reference)}"
    try:
        value = fn(completion, reference)
    except RewardError:
        raise
    except Exception as exc:
        raise RewardError(f"reward {name!r} raised {type(exc).__name__}: {exc} {where}") from exc
    if not isinstance(value, int | float):
        raise RewardError(
            f"reward {name!r} returned a {type(value).__name__} ({shown(value)}), not a number, "
            f"{where}; a reward returns one float per completion"
        )
    if not math.isfinite(value):
        raise RewardError(
            f"reward {name!r} returned {value!r}, not a finite number, {where}; return a "
            "finite float (e.g. 0.0 when no answer can be read)"
        )
    return float(value)


def shown(value: object, limit: int = 80) -> str:
    """`repr(value)` for a message, cut to about `limit` characters (a long completion).

    >>> shown("ab"), shown("x" * 100, limit=20)
    ("'ab'", "'xxxxxxxxxxxxxx... (100 characters)")
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[: limit - 5]}...{size}"


def combine(terms: Terms) -> RewardFn:
    """One reward from weighted terms: Σ weight · reward. A single term of weight 1 is the
    reward itself; in a sum each term is checked separately, so an error names the term."""
    resolved = [(name, get(name), weight) for name, weight in terms]
    if len(resolved) == 1 and resolved[0][2] == 1:
        return resolved[0][1]

    def weighted(completion: str, reference: str) -> float:
        return sum(w * call(fn, name, completion, reference) for name, fn, w in resolved)

    return weighted


def checker(terms: Terms) -> RewardFn:
    """The reward that decides correctness: the first term, unweighted (reward 1.0 = correct)."""
    return get(terms[0][0])


def score(fn: RewardFn, name: str, completions: list[str], references: list[str]) -> list[float]:
    """Rewards for a batch; a reward that raises or returns a non-finite value stops the run."""
    return [call(fn, name, c, r) for c, r in zip(completions, references, strict=True)]
