"""Custom event types: the deployment's own types, validated by their own JSON Schema."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from herald_ingest.app import create_app
from herald_ingest.config import Settings
from support import api_keys

PARCEL_DELAYED = {
    "type": "object",
    "required": ["case_id", "carrier", "days_late"],
    "properties": {
        "case_id": {"type": "string"},
        "customer_ids": {"type": "array", "items": {"type": "string"}},
        "status": {"type": "string"},
        "carrier": {"type": "string", "enum": ["dhl", "ups"]},
        "days_late": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}


@pytest.fixture
def ingest_options() -> dict[str, Any]:
    return {"custom_event_types": {"parcel.delayed": PARCEL_DELAYED}}


def _parcel(**data: object) -> dict[str, object]:
    body = {"case_id": "p-1", "customer_ids": ["c9"], "carrier": "dhl", "days_late": 2}
    return {
        "specversion": "1.0",
        "id": f"p-{len(str(data))}-{sorted(data.items())}",
        "source": "/logistics",
        "type": "parcel.delayed",
        "data": {**body, **data},
    }


async def test_custom_type_is_projected_with_its_fields_as_attributes(
    ingest: httpx.AsyncClient,
) -> None:
    r = await ingest.post("/v1/events", json=_parcel(status="delayed"))
    assert r.status_code == 202, r.text
    case = (await ingest.get("/v1/cases/p-1")).json()
    assert case["status"] == "delayed"
    assert case["attributes"] == {"carrier": "dhl", "days_late": 2}
    assert case["customer_ids"] == ["c9"]


@pytest.mark.parametrize(
    "data,field",
    [({"days_late": 0}, "data.days_late"), ({"carrier": "pigeon"}, "data.carrier")],
)
async def test_custom_type_schema_violations_name_the_field(
    ingest: httpx.AsyncClient, data: dict[str, object], field: str
) -> None:
    r = await ingest.post("/v1/events", json=_parcel(**data))
    assert r.status_code == 422
    assert r.json()["field"] == field
    assert (await ingest.get("/v1/cases/p-1")).status_code == 404


def test_a_custom_type_cannot_shadow_a_built_in_one() -> None:
    with pytest.raises(ValueError, match="shadow"):
        create_app(
            Settings(custom_event_types={"case.updated": {"type": "object"}}, api_keys=api_keys())
        )


def test_an_invalid_custom_schema_is_refused_at_start() -> None:
    from jsonschema.exceptions import SchemaError  # type: ignore[import-untyped]

    with pytest.raises(SchemaError):
        create_app(Settings(custom_event_types={"x.y": {"type": 12}}, api_keys=api_keys()))
