"""Countdown: reach a target with + - * / and each given number exactly once.

The reference is JSON, `{"numbers": [3, 5, 7], "target": 22}` (what `gspo prepare` writes).
The completion's answer is the expression inside its last `<answer>...</answer>`. It is
parsed by a small recursive-descent parser over integers, `+ - * /` and parentheses and
evaluated with exact fractions: nothing is passed to Python's `eval`, so no code runs, and
`7/2*2` is exactly 7. Unary minus, decimals and numbers not given are not allowed.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from fractions import Fraction

MAX_EXPRESSION_CHARS = 300  # longer answers are refused rather than parsed
MAX_DEPTH = 30  # nested parentheses; deeper answers are refused
MAX_SOLVED_NUMBERS = 4  # `solve` searches exhaustively, so only small problems

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


def extract_answer_tag(completion: str) -> str | None:
    """The stripped content of the completion's last `<answer>...</answer>`, or None.

    >>> extract_answer_tag("think... <answer>(7 - 5) * 11</answer>")
    '(7 - 5) * 11'
    """
    found = _ANSWER_RE.findall(completion)
    return found[-1].strip() if found else None


def tokenize(expression: str) -> list[str] | None:
    """Integers, operators and parentheses in order, or None if anything else is there.

    >>> tokenize("(3+5) * 7"), tokenize("3 ** 2"), tokenize("import os")
    (['(', '3', '+', '5', ')', '*', '7'], ['3', '*', '*', '2'], None)
    """
    tokens: list[str] = []
    position = 0
    expression = expression.rstrip()
    while position < len(expression):
        match = _TOKEN_RE.match(expression, position)
        if match is None:
            return None
        tokens.append(match.group(1) or match.group(2))
        position = match.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := INT | '(' expr ')'. Raises ValueError on anything else."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.position = 0
        self.literals: list[int] = []

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ValueError("unexpected end")
        self.position += 1
        return token

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            value = value + self.term(depth) if self.take() == "+" else value - self.term(depth)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor(depth)
            if op == "/" and right == 0:
                raise ValueError("division by zero")
            value = value * right if op == "*" else value / right
        return value

    def factor(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise ValueError("too deeply nested")
        token = self.take()
        if token == "(":
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise ValueError("unbalanced parentheses")
            return value
        if not token.isdigit():
            raise ValueError(f"unexpected {token!r}")
        self.literals.append(int(token))
        return Fraction(int(token))


def evaluate(expression: str) -> tuple[Fraction, list[int]] | None:
    """The exact value of an arithmetic expression and the integers it uses, or None when it
    is not one (other characters, unary minus, division by zero, too long or too deep).

    >>> evaluate("(7 - 5) * 11"), evaluate("7 / 2 * 2")[0], evaluate("-3 + 5"), evaluate("1/0")
    ((Fraction(22, 1), [7, 5, 11]), Fraction(7, 1), None, None)
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    tokens = tokenize(expression)
    if not tokens:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expr(0)
    except ValueError:
        return None
    if parser.position != len(tokens):
        return None
    return value, parser.literals


def parse_reference(reference: str) -> tuple[list[int], int]:
    """(numbers, target) from a reference `{"numbers": [...], "target": N}`.

    >>> parse_reference('{"numbers": [3, 5, 7], "target": 22}')
    ([3, 5, 7], 22)
    """
    data = json.loads(reference)
    return [int(n) for n in data["numbers"]], int(data["target"])


def countdown(completion: str, reference: str) -> float:
    """1.0 when the last `<answer>` expression uses each given number exactly once and equals
    the target; the expression may be followed by `= <target>`. Else 0.0.

    >>> ref = '{"numbers": [3, 5, 7], "target": 22}'
    >>> countdown("<answer>(7 - 5) * 11</answer>", ref), countdown("<answer>3*5+7</answer>", ref)
    (0.0, 1.0)
    >>> countdown("<answer>3 * 5 + 7 = 22</answer>", ref), countdown("<answer>15+7</answer>", ref)
    (1.0, 0.0)
    >>> countdown("<answer>3 * 5 + 7 = 23</answer>", ref)
    0.0
    """
    numbers, target = parse_reference(reference)
    answer = extract_answer_tag(completion)
    if answer is None:
        return 0.0
    expression, _, stated = answer.partition("=")
    if stated.strip() and stated.strip() != str(target):
        return 0.0
    result = evaluate(expression)
    if result is None:
        return 0.0
    value, used = result
    return 1.0 if Counter(used) == Counter(numbers) and value == target else 0.0


def solve(numbers: list[int], target: int) -> str | None:
    """An expression using each number exactly once that equals `target`, or None when there
    is none or there are more than `MAX_SOLVED_NUMBERS` numbers (an exhaustive search: about
    ten thousand expressions for four numbers, millions for five).

    >>> solve([3, 5, 7], 22), solve([2, 2], 5)
    ('(7 + (3 * 5))', None)
    """
    if len(numbers) > MAX_SOLVED_NUMBERS:
        return None

    def search(pool: list[tuple[Fraction, str]]) -> str | None:
        if len(pool) == 1:
            return pool[0][1] if pool[0][0] == target else None
        for i, (a, x) in enumerate(pool):
            for j, (b, y) in enumerate(pool):
                if i == j:
                    continue
                rest = [item for k, item in enumerate(pool) if k not in (i, j)]
                options = [(a + b, f"({x} + {y})"), (a - b, f"({x} - {y})")]
                options += [(a * b, f"({x} * {y})")] + ([(a / b, f"({x} / {y})")] if b else [])
                for value, text in options:
                    found = search([*rest, (value, text)])
                    if found is not None:
                        return found
        return None

    return search([(Fraction(n), str(n)) for n in numbers])
