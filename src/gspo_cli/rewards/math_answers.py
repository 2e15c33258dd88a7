"""Math answer checkers: GSM8K's `#### N` and MATH's `\\boxed{}`, with their normalisation.

GSM8K (Cobbe et al. 2021) ends every reference solution with a line `#### <number>`. The
strict checker reads the last `#### <number>` of the completion, like lm-eval's gsm8k
"strict-match" and nanochat's `tasks/gsm8k.py`; the flexible one reads the completion's last
number, like lm-eval's "flexible-extract". Numbers compare as decimals after removing `$` and
thousands separators, so `$1,000.00` equals `1000`.

MATH (Hendrycks et al. 2021) puts the answer in the solution's last `\\boxed{...}`. The checker
takes the completion's last *balanced* `\\boxed{}` and compares it with the reference after a
normalisation in the spirit of Hendrycks' `strip_string` and Minerva's
`normalize_final_answer` (our own, smaller rule set): spacing, `\\left`/`\\right`, `\\dfrac`,
units in `\\text{ ...}`, degrees, percent and dollar signs, `\\frac12`, `a/b`, `x = ...`, and
numbers that are equal as decimals.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A number as people write it: an optional sign (not a hyphen after a word, as in `3-4`) and
# `$` (`-$5` or `$-5`), thousands groups or plain digits, an optional decimal part; or a bare
# decimal (`.5`).
NUMBER = r"(?:(?<![\w)\]])-)?(?:\$-?)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(NUMBER)
_STRICT_RE = re.compile(r"####\s*(" + NUMBER + r")")


def parse_number(text: str) -> Decimal | None:
    """The decimal value of a written number (`$`, `,` and a trailing `.` ignored), or None.

    >>> parse_number("$1,000.00"), parse_number("-3"), parse_number("18."), parse_number("x")
    (Decimal('1000.00'), Decimal('-3'), Decimal('18'), None)
    """
    cleaned = text.strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def canonical_number(value: Decimal) -> str:
    """A number as one canonical string: integers without a decimal part, no exponent.

    >>> canonical_number(Decimal("18.00")), canonical_number(Decimal("1000")), \
canonical_number(Decimal("0.50"))
    ('18', '1000', '0.5')
    """
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_gsm8k(completion: str) -> str | None:
    """The number of the completion's last `#### <number>`, canonical, or None.

    >>> extract_gsm8k("16 - 3 - 4 = 9 eggs; 9 * 2 = 18\\n#### $18.00"), extract_gsm8k("18")
    ('18', None)
    """
    matches = _STRICT_RE.findall(completion)
    value = parse_number(matches[-1]) if matches else None
    return None if value is None else canonical_number(value)


def extract_last_number(completion: str) -> str | None:
    """The completion's last number, canonical, or None.

    >>> extract_last_number("so she makes $1,080 a week."), extract_last_number("none")
    ('1080', None)
    """
    matches = _NUMBER_RE.findall(completion)
    value = parse_number(matches[-1]) if matches else None
    return None if value is None else canonical_number(value)


def _reference_number(reference: str) -> Decimal | None:
    """A GSM8K reference: a bare number, or a whole solution ending in `#### <number>`."""
    if "####" in reference:
        extracted = extract_gsm8k(reference)
        return None if extracted is None else Decimal(extracted)
    return parse_number(reference)


def _same_number(answer: str | None, reference: str) -> float:
    expected = _reference_number(reference)
    if answer is None or expected is None:
        return 0.0
    return 1.0 if Decimal(answer) == expected else 0.0


def gsm8k(completion: str, reference: str) -> float:
    """1.0 when the completion's last `#### <number>` equals the reference number (strict).

    >>> gsm8k("9 * 2 = 18\\n#### 18", "18"), gsm8k("The answer is 18.", "18")
    (1.0, 0.0)
    >>> gsm8k("#### $1,000.00", "1,000"), gsm8k("#### 17", "18")
    (1.0, 0.0)
    """
    return _same_number(extract_gsm8k(completion), reference)


def gsm8k_flexible(completion: str, reference: str) -> float:
    """1.0 when the completion's last number equals the reference number (flexible).

    >>> gsm8k_flexible("The answer is $18.", "18"), gsm8k_flexible("18 eggs, not 19", "18")
    (1.0, 0.0)
    """
    return _same_number(extract_last_number(completion), reference)


# --- MATH ------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)")


def last_boxed(text: str) -> str | None:
    """The content of the last balanced `\\boxed{...}` (or `\\fbox{...}`, `\\boxed 5`), or None.

    >>> last_boxed(r"so \\boxed{1} or rather \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    >>> last_boxed(r"\\boxed{3} then \\boxed{4"), last_boxed("no box") is None
    ('3', True)
    """
    for match in reversed(list(_BOX_RE.finditer(text))):
        rest = text[match.end() :]
        if rest.startswith(" ") and not rest.lstrip().startswith("{"):
            # `\boxed 5$`: up to the next `$` or end of line
            content = re.split(r"[$\n]", rest.lstrip(), maxsplit=1)[0].strip()
            if content:
                return content
            continue
        rest = rest.lstrip()
        if not rest.startswith("{"):
            continue
        depth = 0
        for i, char in enumerate(rest):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                return rest[1:i]
    return None


_UNWRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|mathbf)\{([^{}]*)\}")
_DROPPED = (r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", "^{\\circ}", "^\\circ")


def _fix_fracs(text: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\frac1{2}` -> `\frac{1}{2}`, `\frac{1}2` -> `\frac{1}{2}`."""
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)


def normalize_math(answer: str) -> str:
    r"""A MATH answer in a canonical written form, for string comparison.

    >>> normalize_math(r"\dfrac{1}{2}"), normalize_math("1/2"), normalize_math(r"\frac12")
    ('\\frac{1}{2}', '\\frac{1}{2}', '\\frac{1}{2}')
    >>> normalize_math(r"x = 5\text{ cm}"), normalize_math(r"90^\circ"), normalize_math("$.5$")
    ('5', '90', '0.5')
    """
    text = answer.strip().replace("\n", " ")
    text = re.sub(r"\\text\{\s[^{}]*\}\s*$", "", text)  # trailing units: `5\text{ cm}`
    for token in _DROPPED:
        text = text.replace(token, "")
    text = text.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    text = text.replace(r"\%", "").replace("%", "").replace(r"\$", "").replace("$", "")
    text = _UNWRAP_RE.sub(r"\1", text)
    text = text.replace(" ", "").rstrip(".")
    assignment = re.fullmatch(r"[a-zA-Z]\w{0,2}=(.+)", text)  # `x=5` -> `5`
    if assignment:
        text = assignment.group(1)
    text = _fix_fracs(text)
    text = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", text)
    simple = re.fullmatch(r"(-?\d+)/(\d+)", text)
    if simple:
        text = rf"\frac{{{simple.group(1)}}}{{{simple.group(2)}}}"
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    value = parse_number(text) if re.fullmatch(r"-?\d*\.?\d+", text) else None
    return canonical_number(value) if value is not None else text


def extract_boxed(completion: str) -> str | None:
    """The completion's last balanced `\\boxed{}` content, normalised, or None.

    >>> extract_boxed(r"... so the answer is $\\boxed{\\dfrac{3}{4}}$.")
    '\\\\frac{3}{4}'
    """
    boxed = last_boxed(completion)
    return None if boxed is None else normalize_math(boxed)


def math_boxed(completion: str, reference: str) -> float:
    """1.0 when the completion's last `\\boxed{}` equals the reference after normalisation.

    The reference may be the bare answer or a whole solution with its own `\\boxed{}`.

    >>> math_boxed(r"... $\\boxed{\\dfrac{1}{2}}$", "1/2"), math_boxed(r"\\boxed{0.5}", ".5")
    (1.0, 1.0)
    >>> math_boxed(r"\\boxed{2}", "3"), math_boxed("the answer is 3", "3")
    (0.0, 0.0)
    """
    answer = extract_boxed(completion)
    boxed_reference = last_boxed(reference)
    expected = normalize_math(boxed_reference if boxed_reference is not None else reference)
    return 1.0 if answer is not None and answer == expected and expected != "" else 0.0
