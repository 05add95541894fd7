"""CEL (Common Expression Language) for campaign filters and still-applies conditions.

CEL is side-effect free and terminates, so operators' expressions can never run code. Shared by
the scheduler (filters at trigger time) and the dispatcher (still-applies at send time).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError, CELParser
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError


class ExpressionError(ValueError):
    """An expression that does not parse or cannot be evaluated."""


# cel-python's parser is one shared instance, built with the first environment's tree nodes: build
# it for the transpiler, whose programs are Python code objects (5-10x faster than walking the
# tree). The interpreter reads the same trees and explains the rare evaluation that fails.
CELParser.CEL_PARSER = None
_ENV = celpy.Environment(runner_class=celpy.CompiledRunner)
_EXPLAIN = celpy.Environment()
# The transpiled program logs every failed evaluation with its exception (values included);
# failures are raised as ExpressionError instead, with the interpreter's message.
logging.getLogger("celpy.Transpiler").setLevel(logging.CRITICAL)


@lru_cache(maxsize=1024)
def _program(expr: str) -> tuple[Any, Any]:
    try:
        ast = _ENV.compile(expr)
    except CELParseError as exc:
        raise ExpressionError(f"does not parse: {exc}") from exc
    try:
        fast = _ENV.program(ast)
    except Exception:  # a construct the transpiler does not cover: interpret it
        fast = None
    return fast, ast


def check(expr: str) -> None:
    """Raise ExpressionError when expr does not compile."""
    _program(expr)


def _interpret(ast: Any, activation: Any) -> Any:
    try:
        return _EXPLAIN.program(ast).evaluate(activation)
    except CELEvalError as exc:
        return exc


def evaluate(expr: str, variables: dict[str, Any]) -> bool:
    """Evaluate expr over JSON-like variables; a non-boolean or error result is an error."""
    fast, ast = _program(expr)
    activation = json_to_cel(variables)
    if fast is None:
        result = _interpret(ast, activation)
    else:
        try:
            result = fast.evaluate(activation)
        except CELEvalError:
            result = _interpret(ast, activation)  # for the precise reason
    if isinstance(result, CELEvalError):
        raise ExpressionError(f"cannot evaluate: {result}")
    if not isinstance(result, BoolType | bool):
        raise ExpressionError("the expression must yield true or false")
    return bool(result)
