"""CEL (Common Expression Language) for campaign filters and still-applies conditions.

CEL is side-effect free and terminates, so operators' expressions can never run code. Shared by
the scheduler (filters at trigger time) and the dispatcher (still-applies at send time).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError


class ExpressionError(ValueError):
    """An expression that does not parse or cannot be evaluated."""


_ENV = celpy.Environment()


@lru_cache(maxsize=1024)
def _program(expr: str) -> Any:
    try:
        return _ENV.program(_ENV.compile(expr))
    except CELParseError as exc:
        raise ExpressionError(f"does not parse: {exc}") from exc


def check(expr: str) -> None:
    """Raise ExpressionError when expr does not compile."""
    _program(expr)


def evaluate(expr: str, variables: dict[str, Any]) -> bool:
    """Evaluate expr over JSON-like variables; a non-boolean or error result is an error."""
    try:
        result = _program(expr).evaluate(json_to_cel(variables))
    except CELEvalError as exc:
        raise ExpressionError(f"cannot evaluate: {exc}") from exc
    if isinstance(result, CELEvalError):
        raise ExpressionError(f"cannot evaluate: {result}")
    if not isinstance(result, BoolType | bool):
        raise ExpressionError("the expression must yield true or false")
    return bool(result)
