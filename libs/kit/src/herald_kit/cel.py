"""CEL (Common Expression Language) for campaign filters and still-applies conditions.

CEL is side-effect free and terminates, so operators' expressions can never run code. Shared by
the scheduler (filters at trigger time) and the dispatcher (still-applies at send time).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from functools import lru_cache
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError, CELParser
from celpy.celtypes import BoolType
from celpy.evaluation import CELEvalError
from lark import Token, Tree


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


# Calls whose result is always a boolean, and calls whose result never is (CEL's standard
# functions and macros): what a type checker tells of an expression's result without knowing
# its variables' types. cel-python has no checker; `check_condition` reads the tree.
_BOOL_CALLS = frozenset({"matches", "startsWith", "endsWith", "contains", "exists", "all", "has"})
_BOOL_CALLS |= {"exists_one"}
_NOT_BOOL_CALLS = frozenset(
    {
        "size", "int", "uint", "double", "string", "bytes", "timestamp", "duration", "type",
        "map", "filter", "lowerAscii", "upperAscii", "substring", "charAt", "indexOf",
        "lastIndexOf", "replace", "split", "join", "trim", "getFullYear", "getMonth", "getDate",
        "getDayOfMonth", "getDayOfWeek", "getDayOfYear", "getHours", "getMinutes", "getSeconds",
        "getMilliseconds",
    }
)  # fmt: skip
# Nodes that, with one child, only wrap it (the grammar's precedence levels).
_WRAPPERS = frozenset(
    {"expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"}
) | {"unary", "member", "primary", "paren_expr"}


def _unwrap(tree: Any) -> Any:
    while isinstance(tree, Tree) and tree.data in _WRAPPERS and len(tree.children) == 1:
        tree = tree.children[0]
    return tree


def _path(tree: Any) -> str | None:
    """`a.b.c` for a plain chain of member names on a variable, else None."""
    tree = _unwrap(tree)
    if tree.data == "ident":
        return str(tree.children[0])
    if tree.data == "member_dot":
        head = _path(tree.children[0])
        return f"{head}.{tree.children[1]}" if head else None
    return None


def _yields_bool(tree: Any, not_boolean: Collection[str]) -> bool | None:
    """True when the expression always yields a boolean, False when it never does, None when
    only its variables' values can tell. `not_boolean`: variables and member paths
    (`contact.locale`) known not to hold a boolean."""
    tree = _unwrap(tree)
    kind, children = tree.data, tree.children
    if kind == "expr":  # c ? a : b
        a, b = _yields_bool(children[1], not_boolean), _yields_bool(children[2], not_boolean)
        return a if a == b else None
    if kind in ("conditionalor", "conditionaland", "relation"):  # ||, &&, ==, <, in, ...
        return True
    if kind in ("addition", "multiplication", "list_lit", "map_lit"):
        return False
    if kind == "unary":
        return bool(children[0].data == "unary_not")
    if kind == "literal":
        return bool(children[0].type == "BOOL_LIT")
    if kind in ("member_dot_arg", "ident_arg"):
        name = str(children[1] if kind == "member_dot_arg" else children[0])
        if name in _BOOL_CALLS:
            return True
        return False if name in _NOT_BOOL_CALLS else None
    if kind in ("ident", "member_dot"):
        return False if _path(tree) in not_boolean else None
    return None


def _regex_literals(tree: Any) -> list[Token]:
    """The string literals given to `matches` as its pattern."""
    found: list[Token] = []
    for node in tree.iter_subtrees():
        if node.data == "member_dot_arg" and str(node.children[1]) == "matches":
            args = node.children[2]
        elif node.data == "ident_arg" and str(node.children[0]) == "matches":
            args = node.children[1]
        else:
            continue
        if not isinstance(args, Tree) or not args.children:
            continue
        pattern = _unwrap(args.children[-1])
        if pattern.data == "literal" and pattern.children[0].type in ("STRING_LIT", "MLSTRING_LIT"):
            found.append(pattern.children[0])
    return found


def check_condition(expr: str, not_boolean: Collection[str] = ()) -> None:
    """Raise ExpressionError when expr, a condition judged per record, cannot yield true or
    false for any record: it does not compile; its result is never a boolean (`1 + 1`,
    `size(x)`, or a member in `not_boolean`); it reads no variable and fails (`1 / 0 == 1`);
    or a `matches` pattern written in it is not a valid regular expression."""
    ast = _program(expr)[1]
    if _yields_bool(ast, not_boolean) is False:
        raise ExpressionError("the expression must yield true or false, and never does")
    for pattern in _regex_literals(ast):
        try:
            evaluate(f'"".matches({pattern})', {})
        except ExpressionError as exc:
            raise ExpressionError(f"{pattern} is not a valid regular expression (RE2)") from exc
    if not free_variables(expr):
        # It reads nothing: what it yields now it yields for every record.
        try:
            evaluate(expr, {})
        except ExpressionError as exc:
            raise ExpressionError(f"reads no variable and fails for every record: {exc}") from exc


# Macros whose first argument names a variable bound inside the others (CEL spec).
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


def _bound_name(expr: Any) -> str | None:
    """The bare identifier an expression consists of (a macro's bound variable), if it is one."""
    idents = [t for t in expr.iter_subtrees() if t.data == "ident"]
    tokens = list(expr.scan_values(lambda v: isinstance(v, Token)))
    if len(idents) == 1 and len(tokens) == 1:
        return str(idents[0].children[0])
    return None


def _free(tree: Any, bound: frozenset[str], found: set[str]) -> None:
    if not isinstance(tree, Tree):
        return
    if tree.data == "ident" and str(tree.children[0]) not in bound:
        found.add(str(tree.children[0]))
        return
    if tree.data == "dot_ident":  # `.name`: a variable named from the root
        found.add(str(tree.children[0]))
        return
    if tree.data == "member_dot_arg" and str(tree.children[1]) in _MACROS:
        target, _, args = tree.children
        _free(target, bound, found)
        exprs = list(args.children)
        name = _bound_name(exprs[0]) if exprs else None
        inner = bound | {name} if name else bound
        for e in exprs[1:] if name else exprs:
            _free(e, inner, found)
        return
    for child in tree.children:
        _free(child, bound, found)


def free_variables(expr: str) -> set[str]:
    """The variables an expression reads (names bound by its macros left out)."""
    found: set[str] = set()
    _free(_program(expr)[1], frozenset(), found)
    return found


def named_members(expr: str) -> set[str]:
    """Every member name and string literal in an expression: a superset of the fields it can
    read from a map (`c.status` and `c["status"]` alike), so a map may be cut down to these."""
    names: set[str] = set()
    for tok in _program(expr)[1].scan_values(lambda v: isinstance(v, Token)):
        if tok.type == "IDENT":
            names.add(str(tok))
        elif tok.type in ("STRING_LIT", "MLSTRING_LIT"):
            # Field names carry no escapes: the text between the quotes is enough.
            text = str(tok).lstrip("rRbB")
            quote = text[:3] if tok.type == "MLSTRING_LIT" else text[:1]
            names.add(text[len(quote) : -len(quote)])
    return names


def _interpret(ast: Any, activation: Any) -> Any:
    try:
        return _EXPLAIN.program(ast).evaluate(activation)
    except CELEvalError as exc:
        return exc


# celpy's messages that never hold an operand's value: its fixed phrases, and the two shapes below
# that name only types or the member an expression asked for. Any other message (a Python
# exception's own text, such as int()'s "invalid literal ... 'Zoë'") can quote a customer's value.
_FIXED_REASONS = frozenset(
    {
        "no such overload",
        "no such key",
        "match error",
        "invalid_argument",
        "modulus or divide by zero",
        "divide by zero",
        "evaluation error",
        "unbound function",
        "return error for overflow",
    }
)
_OVERLOAD = re.compile(
    r"found no matching overload for Token\('\w+', '(\w+)'\) applied to '\((.*)\)'"
)
_TYPE_NAME = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")
_MEMBER = re.compile(r"no such member in mapping: '[A-Za-z_]\w*'")


def _reason(error: CELEvalError) -> str:
    """Why an evaluation failed, without any value it was given: the reason is logged and stored
    with the decision, and the values are customers' case attributes."""
    text = error.args[0] if error.args and isinstance(error.args[0], str) else ""
    kind = error.args[1] if len(error.args) > 1 and isinstance(error.args[1], type) else None
    if overload := _OVERLOAD.fullmatch(text):
        types = ", ".join(_TYPE_NAME.findall(overload[2]))
        return f"no matching overload for {overload[1]} on ({types})"
    if text in _FIXED_REASONS or _MEMBER.fullmatch(text):
        return text
    return f"{kind.__name__ if kind else 'evaluation'} error"


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
        raise ExpressionError(f"cannot evaluate: {_reason(result)}")
    if not isinstance(result, BoolType | bool):
        raise ExpressionError("the expression must yield true or false")
    return bool(result)
