"""What a CEL expression reads: the variables checked at save time, the fields a fan-out keeps."""

from __future__ import annotations

import pytest

from herald_kit.cel import free_variables, named_members


@pytest.mark.parametrize(
    "expr,free",
    [
        ('cases.exists(c, c.status == "delayed") && contact.locale == "nl"', {"cases", "contact"}),
        # A macro's variable is its own inside the macro only.
        ("cases.all(x, x.version > 1) && x == 1", {"cases", "x"}),
        ("size(cases.filter(c, c.status == wanted)) > 0", {"cases", "wanted"}),
        ("[1, 2].map(n, n * 2).exists(m, m > limit)", {"limit"}),
        ("size(cases) > 1", {"cases"}),  # a function's name is not a variable
        (".contact.locale == 'nl'", {"contact"}),
    ],
)
def test_free_variables_are_those_the_expression_reads(expr: str, free: set[str]) -> None:
    assert free_variables(expr) == free


def test_named_members_cover_dotted_and_indexed_fields() -> None:
    names = named_members('cases.exists(c, c.status == "delayed" && c["eta"] != null)')
    assert {"status", "eta"} <= names
    assert "summary" not in names
