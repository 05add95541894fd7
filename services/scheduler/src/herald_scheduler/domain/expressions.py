"""Campaign filters and still-applies conditions in CEL: the shared helper in herald_kit.cel."""

from herald_kit.cel import (
    ExpressionError,
    check,
    check_condition,
    evaluate,
    free_variables,
    named_members,
)

__all__ = [
    "ExpressionError",
    "check",
    "check_condition",
    "evaluate",
    "free_variables",
    "named_members",
]
