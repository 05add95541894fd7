"""An expression that fails on a case says why without quoting the case's values: the reason is
logged (campaign filters, still-applies) and stored with the dispatcher's decision."""

from __future__ import annotations

import pytest

from herald_kit.cel import ExpressionError, evaluate

VALUE = "Zoë Müller, zoë@exämple.de, call +1 (555) 010-4477"


@pytest.mark.parametrize(
    "expr,attributes,reason",
    [
        (
            "case.attributes.note > 2",
            {"note": VALUE},
            "no matching overload for relation_gt on (StringType, IntType)",
        ),
        (
            "case.attributes.note + 1 == 2",
            {"note": VALUE},
            "no matching overload for addition_add on (StringType, IntType)",
        ),
        ("int(case.attributes.note) > 1", {"note": VALUE}, None),
        ("case.attributes.note.startsWith(1)", {"note": VALUE}, None),
        ("case.attributes.count / 0 > 1", {"count": 5}, "modulus or divide by zero"),
        # The member asked for is the expression's own text, and tells the operator what to fix.
        ("case.attributes.priority > 1", {"note": VALUE}, "no such member in mapping: 'priority'"),
    ],
)
def test_a_failed_evaluation_names_the_reason_never_the_value(
    expr: str, attributes: dict[str, object], reason: str | None
) -> None:
    with pytest.raises(ExpressionError) as raised:
        evaluate(expr, {"case": {"attributes": attributes}})
    message = str(raised.value)
    for part in ("Zoë", "exämple", "555", "4477"):
        assert part not in message
    assert message.startswith("cannot evaluate: ")
    if reason is not None:
        assert message == f"cannot evaluate: {reason}"
