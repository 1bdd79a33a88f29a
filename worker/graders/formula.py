"""A multi grader's `calculate_output`: a formula over the graders' scores, parsed and computed without `eval`.

Grammar: numbers, grader names, `+ - * / ^` (power), parentheses, unary minus, and the functions
min, max (one or more arguments), abs, floor, ceil, exp, sqrt, log (one argument). A formula is parsed once
into a small tree (`parse_formula`), and `Formula.compute(scores)` walks it. Errors name the position.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_FORMULA_CHARS = 1000
MAX_DEPTH = 50
TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(.))")

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
ONE_ARGUMENT = {"abs", "floor", "ceil", "exp", "sqrt", "log"}


class FormulaError(ValueError):
    """The formula cannot be read, or cannot be computed (division by zero, log of 0, an unknown name)."""


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Unary:
    operand: Node


@dataclass(frozen=True)
class Binary:
    operator: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Call:
    function: str
    arguments: tuple[Node, ...]


Node = Number | Name | Unary | Binary | Call


@dataclass(frozen=True)
class Formula:
    text: str
    tree: Node

    def names(self) -> set[str]:
        """The grader names the formula reads."""
        found: set[str] = set()
        stack: list[Node] = [self.tree]
        while stack:
            node = stack.pop()
            if isinstance(node, Name):
                found.add(node.name)
            elif isinstance(node, Unary):
                stack.append(node.operand)
            elif isinstance(node, Binary):
                stack += [node.left, node.right]
            elif isinstance(node, Call):
                stack += node.arguments
        return found

    def compute(self, scores: Mapping[str, float]) -> float:
        """The formula's value with each name replaced by its score; FormulaError when it has none."""
        try:
            value = _compute(self.tree, scores)
        except (ZeroDivisionError, OverflowError, ValueError) as exc:
            raise FormulaError(f"'{self.text}' cannot be computed with {dict(scores)}: {exc}") from None
        if not math.isfinite(value):
            raise FormulaError(f"'{self.text}' gives {value} with {dict(scores)}")
        return value


def _compute(node: Node, scores: Mapping[str, float]) -> float:
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Name):
        if node.name not in scores:
            raise FormulaError(f"no grader is named '{node.name}'")
        return float(scores[node.name])
    if isinstance(node, Unary):
        return -_compute(node.operand, scores)
    if isinstance(node, Binary):
        left, right = _compute(node.left, scores), _compute(node.right, scores)
        if node.operator == "+":
            return left + right
        if node.operator == "-":
            return left - right
        if node.operator == "*":
            return left * right
        if node.operator == "/":
            return left / right
        if abs(right) > 64:
            raise ValueError(f"a power of {right:g} is too large")
        return float(left**right)
    return float(FUNCTIONS[node.function](*(_compute(a, scores) for a in node.arguments)))


def parse_formula(text: str) -> Formula:
    """The formula's tree, or FormulaError saying what is wrong and at which character."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("is empty: write a formula such as 0.5 * accuracy + 0.5 * format")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"is {len(text):,} characters long; the limit is {MAX_FORMULA_CHARS:,}")
    parser = _Parser(text)
    tree = parser.expression(0)
    if parser.peek() is not None:
        raise parser.error(f"unexpected '{parser.peek()}'")
    return Formula(text, tree)


class _Parser:
    """Recursive descent: expression = term (+|- term)*; term = power (*|/ power)*; power = unary (^ power)?;
    unary = - unary | atom; atom = number | name | name(args) | (expression)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        position = 0
        while position < len(text):
            match = TOKEN.match(text, position)
            if match is None or match.end() == position:
                break  # only trailing spaces are left
            number, name, other = match.groups()
            start = match.start(match.lastindex or 0)
            if number is not None:
                self.tokens.append(("number", number, start))
            elif name is not None:
                self.tokens.append(("name", name, start))
            elif other is not None and other in "+-*/^(),":
                self.tokens.append(("op", other, start))
            elif other is not None:
                raise FormulaError(f"character {start + 1}: '{other}' is not allowed (use + - * / ^, ( ) and names)")
            position = match.end()
        self.index = 0

    def peek(self) -> str | None:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else None

    def error(self, message: str) -> FormulaError:
        where = self.tokens[self.index][2] + 1 if self.index < len(self.tokens) else len(self.text) + 1
        return FormulaError(f"character {where}: {message}")

    def take(self) -> tuple[str, str, int]:
        if self.index >= len(self.tokens):
            raise self.error("the formula ends too early")
        token = self.tokens[self.index]
        self.index += 1
        return token

    def expression(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels")
        node = self.term(depth)
        while self.peek() in ("+", "-"):
            operator = self.take()[1]
            node = Binary(operator, node, self.term(depth))
        return node

    def term(self, depth: int) -> Node:
        node = self.power(depth)
        while self.peek() in ("*", "/"):
            operator = self.take()[1]
            node = Binary(operator, node, self.power(depth))
        return node

    def power(self, depth: int) -> Node:
        node = self.unary(depth)
        if self.peek() == "^":
            self.take()
            return Binary("^", node, self.power(depth + 1))
        return node

    def unary(self, depth: int) -> Node:
        if self.peek() == "-":
            self.take()
            if depth > MAX_DEPTH:
                raise self.error(f"nested deeper than {MAX_DEPTH} levels")
            return Unary(self.unary(depth + 1))
        if self.peek() == "+":
            self.take()
            return self.unary(depth + 1)
        return self.atom(depth)

    def atom(self, depth: int) -> Node:
        kind, value, _ = self.take()
        if kind == "number":
            return Number(float(value))
        if kind == "name":
            if self.peek() != "(":
                if value in FUNCTIONS:
                    raise self.error(f"{value} needs arguments in parentheses")
                return Name(value)
            if value not in FUNCTIONS:
                self.index -= 1
                raise self.error(f"'{value}' is not a function (use {', '.join(FUNCTIONS)})")
            self.take()
            arguments = [self.expression(depth + 1)]
            while self.peek() == ",":
                self.take()
                arguments.append(self.expression(depth + 1))
            self.expect(")")
            if value in ONE_ARGUMENT and len(arguments) != 1:
                raise self.error(f"{value} takes one argument, got {len(arguments)}")
            return Call(value, tuple(arguments))
        if value == "(":
            node = self.expression(depth + 1)
            self.expect(")")
            return node
        self.index -= 1
        raise self.error(f"expected a number, a name or '(' but found '{value}'")

    def expect(self, symbol: str) -> None:
        if self.peek() != symbol:
            raise self.error(f"expected '{symbol}'")
        self.take()
