"""Campaign filters and still-applies conditions in CEL: the shared helper in herald_kit.cel."""

from herald_kit.cel import ExpressionError, check, evaluate

__all__ = ["ExpressionError", "check", "evaluate"]
