"""An event posted to ingest reaches the customer as exactly one SMS with the latest status."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from herald_devstack import Stack
from support import TEST_KEY, daytime_zone, eventually, phone_in

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


async def test_case_update_reaches_customer_by_sms_once(stack: Stack) -> None:
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    zone = daytime_zone()
    phone = phone_in(zone)
    case_id = f"case-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(headers=AUTH, timeout=10) as http:
        r = await http.post(
            f"{stack.url('preferences')}/v1/contacts",
            json={
                "customer_id": customer,
                "channels": {"sms": phone, "email": "someone@example.com"},
                "ranking": ["sms", "email"],
                "consents": {"service-updates": {"sms": True, "email": True}},
                "locale": "en-GB",
                "time_zone": zone,
            },
        )
        assert r.status_code == 201, r.text

        r = await http.post(
            f"{stack.url('scheduler')}/v1/campaigns",
            json={
                "name": "Case updates",
                "topic": "service-updates",
                "trigger": {"kind": "event", "event_types": ["case.updated"]},
                "messages": {"sms": {"en": {"body": "Case {{ case.case_id }}: {{ case.status }}"}}},
            },
        )
        assert r.status_code == 201, r.text
        campaign = r.json()["id"]
        r = await http.post(f"{stack.url('scheduler')}/v1/campaigns/{campaign}/activate")
        assert r.status_code == 200, r.text

        event = {
            "specversion": "1.0",
            "id": f"evt-{uuid.uuid4().hex[:8]}",
            "source": "/crm/cases",
            "type": "case.updated",
            "data": {
                "case_id": case_id,
                "customer_ids": [customer],
                "status": "engineer booked for 14:00",
                "sequence": 1,
            },
        }
        r = await http.post(f"{stack.url('ingest')}/v1/events", json=event)
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 1

        async def sms_received() -> list[dict[str, object]]:
            resp = await http.get(f"{stack.url('sandbox')}/sandbox/api/sms", params={"to": phone})
            items: list[dict[str, object]] = resp.json()["items"]
            return items

        items = await eventually(sms_received, within=30)
        # Posting the same event again is a duplicate: acknowledged, never a second SMS.
        r = await http.post(f"{stack.url('ingest')}/v1/events", json=event)
        assert r.json()["duplicate"] == 1
        await asyncio.sleep(2)
        items = await sms_received()
        assert len(items) == 1
        assert items[0]["body"] == f"Case {case_id}: engineer booked for 14:00"

        r = await http.get(f"{stack.url('dispatcher')}/v1/decisions/customers/{customer}")
        decisions = r.json()["items"]
        assert [(d["outcome"], d["channel"]) for d in decisions] == [("sent", "sms")]
