"""Preferences on the real broker and database: the contacts API, the consent ledger, the
outbox, STOP/START and bounces from Kafka, GDPR export and erase."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from herald_contracts import (
    DELIVERY_STATUS,
    ENGAGEMENT_REPLY,
    ContactPreferences,
    DeliveryStatus,
    EngagementReply,
    Topics,
    dlq_topic,
)
from herald_kit import decode, encode
from herald_preferences.app import create_app
from herald_preferences.config import Settings
from herald_preferences.domain.ledger import fold
from support import READ_ONLY_KEY, api_keys, eventually, running, unique_phone

Mongo = AsyncMongoClient[dict[str, Any]]


@pytest.fixture
def settings(infra: dict[str, str], namespace: str, db_name: Callable[[str], str]) -> Settings:
    return Settings(
        kafka_bootstrap=infra["kafka"],
        mongo_uri=infra["mongo"],
        mongo_db=db_name("preferences"),
        topic_namespace=namespace,
        api_keys=api_keys(),
        link_secret="test-link-secret",
        republish_interval_seconds=0.2,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


class Snapshots:
    """Reads contacts.preferences.v1 as the dispatcher's local view would."""

    def __init__(self, infra: dict[str, str], namespace: str) -> None:
        self.topic = Topics.CONTACTS_PREFERENCES.name(namespace)
        self.consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=infra["kafka"],
            auto_offset_reset="earliest",
            group_id=f"reader-{uuid.uuid4().hex[:6]}",
        )
        self.records: list[Any] = []

    async def poll(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=200)
        for recs in batch.values():
            self.records.extend(recs)

    def history(self, customer: str) -> list[int | str]:
        """Every value for a key so far, in order: a snapshot's version, or 'tombstone'."""
        return [
            "tombstone" if r.value is None else decode(r, ContactPreferences).data.version
            for r in self.records
            if r.key == customer.encode()
        ]

    def latest(self, customer: str) -> ContactPreferences | str | None:
        """The last value for a key: a snapshot, 'tombstone', or None when none yet."""
        last: Any = None
        for r in self.records:
            if r.key == customer.encode():
                last = "tombstone" if r.value is None else decode(r, ContactPreferences).data
        return last  # type: ignore[no-any-return]

    async def until(self, customer: str, probe: Callable[[Any], bool], within: float = 20) -> Any:
        async def check() -> Any:
            await self.poll()
            got = self.latest(customer)
            return got if got is not None and probe(got) else None

        return await eventually(check, within=within, interval=0.05)


@pytest.fixture
async def snapshots(infra: dict[str, str], namespace: str) -> AsyncIterator[Snapshots]:
    s = Snapshots(infra, namespace)
    await s.consumer.start()
    yield s
    await s.consumer.stop()


def contact(customer: str | None = None, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": customer or f"cust-{uuid.uuid4().hex[:8]}",
        "channels": {"sms": unique_phone(), "email": "ada@example.com"},
        "ranking": ["sms", "email"],
        "consents": {"service-updates": {"sms": True, "email": True}},
        "locale": "en-GB",
        "time_zone": "Europe/London",
    }
    body.update(over)
    return body


def is_problem(r: httpx.Response, status: int, field: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field, r.json()


async def test_create_normalises_and_publishes_the_ranking(
    api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    body = contact(ranking=["email", "sms"])
    body["channels"]["sms"] = "+1 (201) 555-0123"
    body["channels"]["voice"] = "+44 7911 123456"
    r = await api.post("/v1/contacts", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == '"1"'
    got = r.json()
    assert got["ranking"] == ["email", "sms"]
    assert got["channels"]["voice"]["address"] == "+447911123456"
    assert got["channels"]["sms"]["address"] == "+12015550123"
    snap = await snapshots.until(body["customer_id"], lambda s: s != "tombstone")
    assert snap.ranking == ["email", "sms"] and snap.version == 1
    assert snap.consents == {"service-updates": {"email": True, "sms": True}}

    r = await api.patch(
        f"/v1/contacts/{body['customer_id']}",
        content=json.dumps({"ranking": ["voice", "sms", "email"]}),
        headers={"Content-Type": "application/merge-patch+json", "If-Match": '"1"'},
    )
    assert r.status_code == 200, r.text
    assert r.json()["ranking"] == ["voice", "sms", "email"] and r.headers["etag"] == '"2"'
    snap = await snapshots.until(body["customer_id"], lambda s: s.version == 2)
    assert snap.ranking == ["voice", "sms", "email"]


async def test_national_numbers_use_the_default_region(api: httpx.AsyncClient) -> None:
    body = contact()
    body["channels"]["sms"] = "07911 123456"  # default region GB
    r = await api.post("/v1/contacts", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["channels"]["sms"]["address"] == "+447911123456"


async def test_consent_is_derived_from_the_ledger(
    api: httpx.AsyncClient, settings: Settings, mongo: Mongo
) -> None:
    body = contact(consents={"service-updates": {"sms": True}, "marketing": {"email": True}})
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    body["consents"] = {"marketing": {"email": False}, "billing": {"sms": True}}
    r = await api.put(f"/v1/contacts/{cid}", json=body)
    assert r.status_code == 200, r.text
    # Consents the caller did not name keep their evidence and value.
    assert r.json()["consents"] == {
        "billing": {"sms": True},
        "marketing": {"email": False},
        "service-updates": {"sms": True},
    }
    history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
    entries = [(e["topic"], e["channel"], e["granted"], e["version"]) for e in history["entries"]]
    assert entries == [
        ("marketing", "email", True, 1),
        ("service-updates", "sms", True, 1),
        ("billing", "sms", True, 2),
        ("marketing", "email", False, 2),
    ]
    assert history["current"] == r.json()["consents"]

    # The ledger is the source: corrupt the cached consent in the stored document and the
    # history still derives the truth; the next write re-derives the cache from the ledger.
    db = mongo[settings.mongo_db]
    stored = await db["consent_ledger"].find({"customer_id": cid}).to_list()
    assert fold(stored).effective() == history["current"]
    await db["contacts"].update_one({"_id": cid}, {"$set": {"consents": {}, "granted": {}}})
    assert (await api.get(f"/v1/contacts/{cid}/consents")).json()["current"] == history["current"]
    r = await api.patch(
        f"/v1/contacts/{cid}",
        json={"locale": "en-US"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["consents"] == history["current"]


async def test_a_patch_restates_consent_from_the_ledger_not_from_the_cache(
    api: httpx.AsyncClient, settings: Settings, mongo: Mongo
) -> None:
    body = contact(consents={"marketing": {"email": False}})
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    db = mongo[settings.mongo_db]
    # A cache that claims a grant the ledger has no evidence of.
    await db["contacts"].update_one(
        {"_id": cid},
        {"$set": {"granted": {"marketing": {"email": True}, "billing": {"sms": True}}}},
    )
    r = await api.patch(
        f"/v1/contacts/{cid}",
        json={"locale": "en-US"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["consents"] == {"marketing": {"email": False}}
    history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
    assert [(e["topic"], e["granted"], e["version"]) for e in history["entries"]] == [
        ("marketing", False, 1)
    ]


async def test_idempotency_key_replays_and_refuses_another_body(
    api: httpx.AsyncClient, settings: Settings, mongo: Mongo
) -> None:
    body = contact()
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await api.post("/v1/contacts", json=body, headers=key)
    again = await api.post("/v1/contacts", json=body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["etag"] == first.headers["etag"]
    assert again.headers["idempotent-replayed"] == "true"
    other = await api.post("/v1/contacts", json={**body, "locale": "fr"}, headers=key)
    is_problem(other, 422, "Idempotency-Key")
    ledger = await mongo[settings.mongo_db]["consent_ledger"].count_documents(
        {"customer_id": body["customer_id"]}
    )
    assert ledger == 2  # one write, not two
    # Without a key, a second create is a conflict, not a silent duplicate.
    is_problem(await api.post("/v1/contacts", json=body), 409, "customer_id")

    # A replace under one key applies once: the version moves 1 -> 2, never 3.
    cid = body["customer_id"]
    put_key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    changed = {**body, "ranking": ["email"]}
    a = await api.put(f"/v1/contacts/{cid}", json=changed, headers=put_key)
    b = await api.put(f"/v1/contacts/{cid}", json=changed, headers=put_key)
    assert a.json()["version"] == b.json()["version"] == 2
    assert (await api.get(f"/v1/contacts/{cid}")).json()["version"] == 2


async def test_a_database_blip_in_a_keyed_write_leaves_the_key_free_once_it_is_back(
    app: FastAPI, api: httpx.AsyncClient, settings: Settings, mongo: Mongo
) -> None:
    """The write fails with the database, and so does releasing its key: the release is
    retried in the background, so the retry is not refused as in progress until the claim
    goes stale (idempotency_stale_seconds, 60 s)."""
    repo, store = app.state.repo, app.state.idempotency
    real_create, real_release = repo.create, store.release
    away = True

    async def create(*args: Any, **kwargs: Any) -> Any:
        raise AutoReconnect("the database went away")

    async def release(*args: Any, **kwargs: Any) -> None:
        if away:
            raise AutoReconnect("the database is still away")
        await real_release(*args, **kwargs)

    repo.create, store.release = create, release
    body = contact()
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    r = await api.post("/v1/contacts", json=body, headers=key)
    assert r.status_code == 503, r.text
    repo.create = real_create
    # While the database is away the claim stays: a retry is told when to come back.
    busy = await api.post("/v1/contacts", json=body, headers=key)
    is_problem(busy, 409, "Idempotency-Key")
    assert int(busy.headers["retry-after"]) >= 1
    away = False
    claims = mongo[settings.mongo_db]["idempotency"]

    async def released() -> bool:
        return await claims.count_documents({"state": "pending"}) == 0

    await eventually(released, within=15)  # with no request meanwhile
    r = await api.post("/v1/contacts", json=body, headers=key)
    assert r.status_code == 201, r.text
    assert r.json()["customer_id"] == body["customer_id"]
    store.release = real_release


async def test_a_write_whose_answer_could_not_be_stored_answers_and_is_replayed(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    """The write is applied, then the database fails storing its answer: the caller still gets
    it, and a retry with the key replays it instead of answering 409 'exists' (the replica
    that has the answer to store stores it when the key comes again)."""
    store = app.state.idempotency
    real_complete = store.complete
    away = True

    async def complete(*args: Any, **kwargs: Any) -> None:
        if away:
            raise AutoReconnect("the database went away")
        await real_complete(*args, **kwargs)

    store.complete = complete
    body = contact()
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await api.post("/v1/contacts", json=body, headers=key)
    assert first.status_code == 201, first.text
    assert (await api.get(f"/v1/contacts/{body['customer_id']}")).status_code == 200
    busy = await api.post("/v1/contacts", json=body, headers=key)
    is_problem(busy, 409, "Idempotency-Key")  # in progress while the answer is not stored
    away = False
    again = await api.post("/v1/contacts", json=body, headers=key)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    store.complete = real_complete


async def test_the_same_json_formatted_otherwise_is_a_repeat_not_another_request(
    api: httpx.AsyncClient,
) -> None:
    body = contact()
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await api.post("/v1/contacts", json=body, headers=key)
    assert first.status_code == 201, first.text
    reformatted = json.dumps(dict(reversed(list(body.items()))), indent=2)
    again = await api.post(
        "/v1/contacts",
        content=reformatted,
        headers={**key, "Content-Type": "application/json"},
    )
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()


async def test_null_under_consents_withdraws_the_consent_in_the_ledger(
    api: httpx.AsyncClient,
) -> None:
    body = contact(
        consents={
            "service-updates": {"sms": True, "email": True},
            "billing": {"sms": True, "email": True},
        }
    )
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    patch = {"Content-Type": "application/merge-patch+json"}
    r = await api.patch(
        f"/v1/contacts/{cid}", json={"consents": {"service-updates": {"sms": None}}}, headers=patch
    )
    assert r.status_code == 200, r.text
    assert r.json()["consents"]["service-updates"] == {"email": True, "sms": False}
    r = await api.patch(f"/v1/contacts/{cid}", json={"consents": {"billing": None}}, headers=patch)
    assert r.json()["consents"]["billing"] == {"email": False, "sms": False}
    history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
    withdrawals = [
        (e["topic"], e["channel"], e["source"]) for e in history["entries"] if not e["granted"]
    ]
    assert withdrawals == [
        ("service-updates", "sms", "api"),
        ("billing", "email", "api"),
        ("billing", "sms", "api"),
    ]


async def test_concurrent_writes_one_wins_the_other_gets_412(api: httpx.AsyncClient) -> None:
    body = contact()
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    a = {**body, "ranking": ["email", "sms"], "consents": {"billing": {"email": True}}}
    b = {**body, "ranking": ["sms"], "consents": {"billing": {"sms": True}}}
    ra, rb = await asyncio.gather(
        api.put(f"/v1/contacts/{cid}", json=a, headers={"If-Match": '"1"'}),
        api.put(f"/v1/contacts/{cid}", json=b, headers={"If-Match": '"1"'}),
    )
    assert sorted([ra.status_code, rb.status_code]) == [200, 412]
    winner, loser = (ra, rb) if ra.status_code == 200 else (rb, ra)
    is_problem(loser, 412, "If-Match")
    now = (await api.get(f"/v1/contacts/{cid}")).json()
    assert now == winner.json() and now["version"] == 2
    # Only the winner's consent change is in the ledger.
    history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
    assert [e["version"] for e in history["entries"]].count(2) == 1
    # A stale ETag is refused too.
    stale = await api.put(f"/v1/contacts/{cid}", json=a, headers={"If-Match": '"1"'})
    is_problem(stale, 412, "If-Match")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channels": {"sms": "+1 555 0000"}}, "channels.sms"),
        ({"channels": {"sms": "not a number"}}, "channels.sms"),
        ({"channels": {"email": "ada@"}}, "channels.email"),
        ({"time_zone": "Mars/Olympus_Mons"}, "time_zone"),
        ({"time_zone": "Europe"}, "time_zone"),  # a directory of the zone database
        ({"time_zone": "x" * 300}, "time_zone"),  # longer than a file name may be
        ({"ranking": ["sms", "fax"]}, "ranking.1"),
        ({"channels": {"fax": "+12015550100"}}, "channels.fax"),
        ({"consents": {"billing": {"pigeon": True}}}, "consents.billing.pigeon.[key]"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "21:00", "end": "7am"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "21:00", "end": "21:00"}}, "quiet_hours"),
        ({"locale": "english please"}, "locale"),
        # /v1/contacts/acme/42 could never reach it: created, it could not be read or erased.
        ({"customer_id": "acme/42"}, "customer_id"),
    ],
)
async def test_bad_input_is_a_problem_naming_the_field_and_stores_nothing(
    api: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    body = contact(**change)
    r = await api.post("/v1/contacts", json=body)
    is_problem(r, 422, field)
    assert (await api.get(f"/v1/contacts/{body['customer_id']}")).status_code == 404
    assert (await api.get("/v1/contacts")).json()["items"] == []


async def test_body_over_the_size_limit_is_413(api: httpx.AsyncClient) -> None:
    body = contact(notes="x" * 70_000)
    r = await api.post("/v1/contacts", json=body)
    is_problem(r, 413, "body")
    assert (await api.get(f"/v1/contacts/{body['customer_id']}")).status_code == 404


async def test_read_only_key_cannot_write_or_erase(api: httpx.AsyncClient) -> None:
    body = contact()
    ro = {"Authorization": f"Bearer {READ_ONLY_KEY}"}
    assert (await api.post("/v1/contacts", json=body, headers=ro)).status_code == 403
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    assert (await api.get(f"/v1/contacts/{body['customer_id']}", headers=ro)).status_code == 200
    r = await api.delete(f"/v1/contacts/{body['customer_id']}", headers=ro)
    assert r.status_code == 403
    r = await api.get(f"/v1/contacts/{body['customer_id']}/export", headers=ro)
    assert r.status_code == 403


async def test_list_pages_through_every_contact(api: httpx.AsyncClient) -> None:
    ids = sorted(f"page-{i:02d}" for i in range(7))
    for cid in ids:
        assert (await api.post("/v1/contacts", json=contact(cid))).status_code == 201
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"after": after} if after else {})}
        page = (await api.get("/v1/contacts", params=params)).json()
        seen += [c["customer_id"] for c in page["items"]]
        after = page["next"]
        if after is None:
            break
    assert seen == ids


async def test_bulk_import_applies_valid_rows_and_reports_the_others(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    existing = contact()
    assert (await api.post("/v1/contacts", json=existing)).status_code == 201
    good = [contact() for _ in range(3)]
    rows = [
        good[0],
        contact(time_zone="Nowhere/Land"),
        good[1],
        existing,
        good[2],
        {**good[2]},
        contact(channels={"sms": "12"}),
    ]
    # A blank line (a file edited by hand, CRLF endings) is skipped: rows count what is there,
    # and each error also names the line an editor shows.
    lines = [json.dumps(r) for r in rows]
    ndjson = "\r\n".join([*lines[:2], "", *lines[2:]]) + "\n{not json\n"
    r = await api.post(
        "/v1/contacts/import", content=ndjson, headers={"Content-Type": "application/x-ndjson"}
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["accepted"] == 3
    assert [(e["row"], e["line"], e["status"], e["field"]) for e in result["errors"]] == [
        (1, 2, 422, "time_zone"),
        (3, 5, 409, "customer_id"),
        (5, 7, 409, "customer_id"),
        (6, 8, 422, "channels.sms"),
        (7, 9, 400, "body"),
    ]
    assert result["errors"][-1]["detail"] == "line 9 is not JSON"
    for c in good:
        got = (await api.get(f"/v1/contacts/{c['customer_id']}")).json()
        assert got["consents"] == {"service-updates": {"email": True, "sms": True}}
        history = (await api.get(f"/v1/contacts/{c['customer_id']}/consents")).json()
        assert {e["source"] for e in history["entries"]} == {"import"}
        await snapshots.until(c["customer_id"], lambda s: s != "tombstone")
    # A rejected row left nothing behind, and the existing contact's evidence is its own.
    assert (await api.get(f"/v1/contacts/{rows[1]['customer_id']}")).status_code == 404
    history = (await api.get(f"/v1/contacts/{existing['customer_id']}/consents")).json()
    assert {e["source"] for e in history["entries"]} == {"api"}
    ledger = app.state.repo.ledger
    assert {e["source"] async for e in ledger.find({"customer_id": existing["customer_id"]})} == {
        "api"
    }
    # JSON arrays work too.
    r = await api.post("/v1/contacts/import", json=[contact()])
    assert r.json()["accepted"] == 1


async def test_an_imports_consents_do_not_leak_into_a_concurrent_create_of_the_same_customer(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    repo = app.state.repo
    real = repo.create_many
    row = contact(consents={"marketing": {"sms": True}})
    cid = row["customer_id"]
    created: list[Any] = []

    async def post_first(docs: Any) -> set[int]:
        # The import's entries are in the ledger; a single create of the customer lands now.
        r = await api.post("/v1/contacts", json=contact(cid, consents={}))
        created.append(r)
        return await real(docs)

    repo.create_many = post_first
    r = await api.post("/v1/contacts/import", json=[row])
    assert [e["status"] for e in r.json()["errors"]] == [409]
    assert created[0].status_code == 201, created[0].text
    assert created[0].json()["consents"] == {}  # the customer never consented through the API
    repo.create_many = real

    # An unrelated change does not turn the rejected row's consent into the API's grant.
    r = await api.patch(
        f"/v1/contacts/{cid}",
        json={"locale": "en-US"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.json()["consents"] == {}
    history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
    assert history["current"] == {} and history["entries"] == []
    snap = await snapshots.until(cid, lambda s: s != "tombstone" and s.version == 2)
    assert snap.consents == {}


async def test_an_import_interrupted_after_its_ledger_copy_leaves_no_evidence_behind(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    repo = app.state.repo
    rows = [contact(), contact()]

    async def crash(docs: Any) -> set[int]:
        raise AutoReconnect("the database went away here")

    repo.create_many = crash  # the ledger entries are in, the contacts never will be
    r = await api.post("/v1/contacts/import", json=rows)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    ids = [row["customer_id"] for row in rows]

    async def cleaned() -> bool:
        left = [e async for e in repo.ledger.find({"customer_id": {"$in": ids}})]
        return not left and await repo.outbox.count_documents({"batch": {"$exists": True}}) == 0

    await eventually(cleaned)
    for cid in ids:
        assert (await api.get(f"/v1/contacts/{cid}")).status_code == 404


async def test_an_import_interrupted_before_publishing_is_published_by_the_republisher(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    outbox = app.state.outbox

    async def crash(docs: Any, marker: str) -> None:
        raise KafkaConnectionError("broker went away")

    outbox.flush_new = crash
    rows = [contact(), contact()]
    r = await api.post("/v1/contacts/import", json=rows)
    assert r.json()["accepted"] == 2  # durable; publishing is the republisher's job now
    for row in rows:
        snap = await snapshots.until(row["customer_id"], lambda s: s != "tombstone")
        assert snap.consents == {"service-updates": {"email": True, "sms": True}}
        history = (await api.get(f"/v1/contacts/{row['customer_id']}/consents")).json()
        assert [e["proof"].startswith("import:") for e in history["entries"]] == [True, True]


async def test_snapshot_is_not_lost_when_kafka_fails_after_the_write(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    producer = app.state.runtime.producer
    real = producer.publish
    failures = 0

    async def flaky(*args: Any, **kwargs: Any) -> None:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise KafkaConnectionError("broker went away")
        await real(*args, **kwargs)

    producer.publish = flaky
    body = contact()
    r = await api.post("/v1/contacts", json=body)
    assert r.status_code == 201, r.text  # durable in the database; publishing is the outbox's job
    snap = await snapshots.until(body["customer_id"], lambda s: s != "tombstone")
    assert snap.version == 1 and failures == 2

    async def flushed() -> bool:
        marker = await app.state.repo.outbox.find_one({"_id": body["customer_id"]})
        return marker is None

    await eventually(flushed)
    history = (await api.get(f"/v1/contacts/{body['customer_id']}/consents")).json()
    assert len(history["entries"]) == 2


async def test_a_write_answers_as_stored_while_the_broker_does_not_acknowledge(
    settings: Settings, snapshots: Snapshots
) -> None:
    """A broker that is away holds a send for as long as it is away: the write still answers
    once stored, and the republisher publishes its snapshot when the broker is back."""
    app = create_app(settings.model_copy(update={"publish_wait_seconds": 0.5}))
    async with running(app) as api:
        producer = app.state.runtime.producer
        real = producer.publish
        held = asyncio.Event()

        async def unacknowledged(*args: Any, **kwargs: Any) -> None:
            await held.wait()  # the broker never answers while it is away
            await real(*args, **kwargs)

        producer.publish = unacknowledged
        body = contact()
        r = await asyncio.wait_for(api.post("/v1/contacts", json=body), timeout=30)
        assert r.status_code == 201, r.text
        assert r.json()["customer_id"] == body["customer_id"]
        held.set()  # the broker is back
        producer.publish = real
        snap = await snapshots.until(body["customer_id"], lambda s: s != "tombstone")
        assert snap.version == 1


async def _send(infra: dict[str, str], topic: str, items: list[tuple[Any, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=infra["kafka"])
    await producer.start()
    try:
        for et, data in items:
            if isinstance(data, bytes):
                await producer.send_and_wait(topic, data, key=b"x", headers=[])
                continue
            headers, value = encode(et, data, source="test")
            await producer.send_and_wait(
                topic, value, key=data.customer_id.encode(), headers=headers
            )
    finally:
        await producer.stop()


def reply(customer: str, intent: str, text: str | None, channel: str = "sms") -> EngagementReply:
    return EngagementReply.model_validate(
        {
            "reply_id": f"r-{uuid.uuid4().hex[:8]}",
            "customer_id": customer,
            "channel": channel,
            "intent": intent,
            "text": text,
            "at": datetime.now(UTC),
        }
    )


async def test_stop_then_start_through_engagement_replies(
    api: httpx.AsyncClient, snapshots: Snapshots, infra: dict[str, str], namespace: str
) -> None:
    body = contact(
        consents={"service-updates": {"sms": True, "email": True}, "billing": {"sms": True}}
    )
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    topic = Topics.ENGAGEMENT_REPLIES.name(namespace)

    stop = reply(cid, "stop", "STOP")
    await _send(infra, topic, [(ENGAGEMENT_REPLY, stop), (ENGAGEMENT_REPLY, stop)])  # redelivered
    snap = await snapshots.until(cid, lambda s: s.consents["service-updates"]["sms"] is False)
    assert snap.consents == {
        "billing": {"sms": False},
        "service-updates": {"email": True, "sms": False},
    }
    # The API cannot quietly override a STOP: stating the old consent again changes nothing.
    r = await api.put(f"/v1/contacts/{cid}", json=body)
    assert r.json()["consents"]["service-updates"]["sms"] is False

    start = reply(cid, "start", "START")
    await _send(infra, topic, [(ENGAGEMENT_REPLY, start)])
    snap = await snapshots.until(cid, lambda s: s.consents["service-updates"]["sms"] is True)
    assert snap.consents["billing"] == {"sms": True}  # START restores what was granted

    # Chinese operators' opt-out word, classified by us when the sender could not.
    await _send(infra, topic, [(ENGAGEMENT_REPLY, reply(cid, "other", "退订"))])
    await snapshots.until(cid, lambda s: s.consents["billing"]["sms"] is False)

    history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
    stops = [e for e in history["entries"] if e["topic"] == "*"]
    assert [(e["granted"], e["source"]) for e in stops] == [
        (False, "sms-keyword"),
        (True, "sms-keyword"),
        (False, "sms-keyword"),
    ]  # the redelivered STOP was applied once
    assert stops[0]["proof"] == f"reply:{stop.reply_id}"
    assert history["stopped_channels"] == ["sms"]


async def test_a_one_click_unsubscribe_is_not_undone_by_a_crm_restating_old_data(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    body = contact(consents={"marketing": {"email": True}, "billing": {"email": True}})
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    unsubscribe = reply(cid, "unsubscribe", None, channel="email").model_copy(
        update={"topic": "marketing"}
    )
    await app.state.handlers.on_reply(unsubscribe)

    # A PUT of the record the CRM had, and a PATCH naming the consent, both leave it withdrawn.
    r = await api.put(f"/v1/contacts/{cid}", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["consents"] == {"billing": {"email": True}, "marketing": {"email": False}}
    r = await api.patch(
        f"/v1/contacts/{cid}",
        json={"consents": {"marketing": {"email": True}, "billing": {"email": False}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.json()["consents"] == {"billing": {"email": False}, "marketing": {"email": False}}
    snap = await snapshots.until(cid, lambda s: s.version == r.json()["version"])
    assert snap.consents["marketing"] == {"email": False}

    history = (await api.get(f"/v1/contacts/{cid}/consents")).json()
    assert history["withdrawn"] == {"marketing": ["email"]}
    assert [
        (e["topic"], e["granted"], e["source"])
        for e in history["entries"]
        if e["topic"] == "marketing"
    ] == [("marketing", True, "api"), ("marketing", False, "email-unsubscribe")]


async def test_hard_bounce_marks_the_address_and_bad_bytes_go_to_the_dlq(
    api: httpx.AsyncClient, snapshots: Snapshots, infra: dict[str, str], namespace: str
) -> None:
    body = contact()
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201

    def status(channel: str, state: str, code: str | None) -> DeliveryStatus:
        return DeliveryStatus.model_validate(
            {
                "message_id": f"m-{uuid.uuid4().hex[:6]}",
                "request_id": "req",
                "campaign_id": "camp",
                "customer_id": cid,
                "channel": channel,
                "status": state,
                "error_code": code,
                "at": datetime.now(UTC),
            }
        )

    topic = Topics.DELIVERY_STATUS.name(namespace)
    await _send(
        infra,
        topic,
        [
            (DELIVERY_STATUS, status("email", "failed", "4.2.2")),  # soft: leave it
            (None, b"\xff not an event"),
            (DELIVERY_STATUS, status("email", "failed", "5.1.1")),
            # The dispatcher's decision not to contact: no channel, no address to mark.
            (
                DELIVERY_STATUS,
                status("sms", "suppressed", None).model_copy(update={"channel": None}),
            ),
            (DELIVERY_STATUS, status("sms", "undelivered", "30005")),
        ],
    )
    snap = await snapshots.until(
        cid, lambda s: s.channels["sms"].status == "unreachable" and s.version == 3
    )
    assert snap.channels["email"].status == "bounced"
    got = (await api.get(f"/v1/contacts/{cid}")).json()
    assert got["channels"]["email"]["status"] == "bounced"

    dlq = AIOKafkaConsumer(
        dlq_topic("preferences").name(namespace),
        bootstrap_servers=infra["kafka"],
        auto_offset_reset="earliest",
        group_id=f"dlq-{uuid.uuid4().hex[:6]}",
    )
    await dlq.start()
    try:
        found: list[Any] = []

        async def dead() -> bool:
            for recs in (await dlq.getmany(timeout_ms=300)).values():
                found.extend(recs)
            return bool(found)

        await eventually(dead)
        await asyncio.sleep(0.5)  # the suppressed status, were it dead-lettered, follows it
        found.extend(r for recs in (await dlq.getmany(timeout_ms=300)).values() for r in recs)
        assert len(found) == 1
        assert dict(found[0].headers)["x-herald-reason"].startswith(b"missing ce_type")
    finally:
        await dlq.stop()


async def test_export_then_erase_leaves_anonymised_evidence_and_a_tombstone(
    api: httpx.AsyncClient, snapshots: Snapshots, settings: Settings, mongo: Mongo
) -> None:
    body = contact()
    cid = body["customer_id"]
    phone = body["channels"]["sms"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    exported = (await api.get(f"/v1/contacts/{cid}/export")).json()
    assert exported["contact"]["channels"]["sms"]["address"] == phone
    assert len(exported["consent_ledger"]) == 2

    r = await api.delete(f"/v1/contacts/{cid}")
    assert r.status_code == 200, r.text
    assert r.json()["ledger_entries_kept"] == 2
    assert await snapshots.until(cid, lambda s: s == "tombstone") == "tombstone"
    assert (await api.get(f"/v1/contacts/{cid}")).status_code == 404
    assert (await api.get(f"/v1/contacts/{cid}/export")).status_code == 404

    db = mongo[settings.mongo_db]
    assert await db["contacts"].count_documents({"_id": cid}) == 0
    kept = await db["consent_ledger"].find({"erased": True}).to_list()
    assert len(kept) == 2
    text = json.dumps(kept, default=str)
    assert cid not in text and phone not in text and "ada@example.com" not in text
    assert {e["source"] for e in kept} == {"api"}


async def test_an_erase_during_another_writes_flush_stays_the_last_word_on_the_topic(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    body = contact()
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    producer = app.state.runtime.producer
    real = producer.publish

    async def erase_first(*args: Any, **kwargs: Any) -> None:
        # The PATCH's flush read its version; the erase runs whole before that snapshot is out.
        producer.publish = real
        r = await api.delete(f"/v1/contacts/{cid}")
        assert r.status_code == 200, r.text
        await real(*args, **kwargs)

    producer.publish = erase_first
    r = await api.patch(
        f"/v1/contacts/{cid}",
        json={"locale": "fr-FR"},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert r.status_code == 200, r.text

    async def stale_snapshot_read() -> bool:
        await snapshots.poll()
        return 2 in snapshots.history(cid) and snapshots.history(cid)[-1] == "tombstone"

    # Create, the erase's tombstone, the PATCH's stale snapshot, then the tombstone again.
    await eventually(stale_snapshot_read, within=10)
    assert snapshots.history(cid) == [1, "tombstone", 2, "tombstone"]
    assert (await api.get(f"/v1/contacts/{cid}")).status_code == 404


async def test_an_erase_after_a_write_answered_before_its_snapshot_was_acknowledged_stays_last(
    settings: Settings, snapshots: Snapshots
) -> None:
    """A write answers once `publish_wait_seconds` has passed, but its snapshot stays queued in
    the producer and reaches the topic when the broker is back; an erase meanwhile (as on
    another replica, whose broker connection is up) publishes its tombstone first. The write's
    flush still reads the contact again once its snapshot is out and publishes the tombstone
    after it, or the erased customer's phone number would be the topic's last word."""
    app = create_app(settings.model_copy(update={"publish_wait_seconds": 0.5}))
    async with running(app) as api:
        body = contact()
        cid = body["customer_id"]
        assert (await api.post("/v1/contacts", json=body)).status_code == 201
        producer = app.state.runtime.producer
        real = producer.publish
        back = asyncio.Event()

        async def deliver(*args: Any, **kwargs: Any) -> None:
            await back.wait()  # the broker is away for this producer's connection
            await real(*args, **kwargs)

        async def queued(*args: Any, **kwargs: Any) -> None:
            # The producer keeps a record it accepted, whoever stops waiting for it.
            producer.publish = real
            await asyncio.shield(asyncio.ensure_future(deliver(*args, **kwargs)))

        producer.publish = queued
        r = await asyncio.wait_for(
            api.patch(
                f"/v1/contacts/{cid}",
                json={"locale": "fr-FR"},
                headers={"Content-Type": "application/merge-patch+json"},
            ),
            timeout=30,
        )
        assert r.status_code == 200, r.text  # answered as stored, the snapshot still queued
        r = await api.delete(f"/v1/contacts/{cid}")
        assert r.status_code == 200, r.text
        await snapshots.until(cid, lambda s: s == "tombstone")
        back.set()

        async def snapshot_then_tombstone() -> bool:
            await snapshots.poll()
            return 2 in snapshots.history(cid) and snapshots.history(cid)[-1] == "tombstone"

        await eventually(snapshot_then_tombstone, within=10)
        assert snapshots.history(cid) == [1, "tombstone", 2, "tombstone"]


async def test_a_flush_racing_an_erase_does_not_name_the_customer_in_the_ledger_again(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots, settings: Settings, mongo: Mongo
) -> None:
    body = contact()
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    repo = app.state.repo
    real = repo.get
    armed = [True]

    async def erase_after_read(customer_id: str) -> Any:
        doc = await real(customer_id)
        if armed:
            armed.clear()
            # The erase runs whole between this flush's read and its copy of the queued entries.
            r = await api.delete(f"/v1/contacts/{cid}")
            assert r.status_code == 200, r.text
        return doc

    repo.get = erase_after_read
    # A republisher run, a redelivered reply or a bounce flushing the contact.
    await app.state.outbox.flush(cid)
    repo.get = real

    db = mongo[settings.mongo_db]
    assert await db["consent_ledger"].count_documents({"customer_id": cid}) == 0
    assert await db["consent_ledger"].count_documents({"erased": True}) == 2
    assert await db["contacts"].count_documents({"_id": cid}) == 0
    assert await snapshots.until(cid, lambda s: s == "tombstone") == "tombstone"


async def test_an_erase_while_a_keyed_write_runs_leaves_no_response_with_its_addresses(
    app: FastAPI, api: httpx.AsyncClient, settings: Settings, mongo: Mongo
) -> None:
    body = contact()
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    store = app.state.idempotency
    real = store.complete

    async def erase_first(key: str, **kwargs: Any) -> None:
        # The PATCH has written; its response is not stored yet when the erase runs.
        r = await api.delete(f"/v1/contacts/{cid}")
        assert r.status_code == 200, r.text
        await real(key, **kwargs)

    store.complete = erase_first
    r = await api.patch(
        f"/v1/contacts/{cid}",
        json={"locale": "fr-FR"},
        headers={"Content-Type": "application/merge-patch+json", "Idempotency-Key": "p-1"},
    )
    store.complete = real
    assert r.status_code == 200, r.text
    rows = await mongo[settings.mongo_db]["idempotency"].find().to_list()
    text = json.dumps(rows, default=str)
    assert body["channels"]["sms"][-6:] not in text and "ada@example.com" not in text


@pytest.mark.parametrize("if_match", [None, '"1"'])
async def test_an_erase_retries_a_write_landing_mid_erase_unless_if_match_was_given(
    app: FastAPI, api: httpx.AsyncClient, settings: Settings, mongo: Mongo, if_match: str | None
) -> None:
    body = contact()
    cid = body["customer_id"]
    assert (await api.post("/v1/contacts", json=body)).status_code == 201
    repo = app.state.repo
    real = repo.copy_to_ledger
    fired: list[int] = []

    async def write_first(entries: Any) -> None:
        if not fired:
            fired.append(1)
            # A customer's withdrawal lands between the erase's read and its write.
            r = await api.patch(
                f"/v1/contacts/{cid}",
                json={"consents": {"service-updates": {"sms": False}}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert r.status_code == 200, r.text
        await real(entries)

    repo.copy_to_ledger = write_first
    r = await api.delete(f"/v1/contacts/{cid}", headers={"If-Match": if_match} if if_match else {})
    repo.copy_to_ledger = real
    db = mongo[settings.mongo_db]
    if if_match is not None:
        is_problem(r, 412, "If-Match")
        assert (await api.get(f"/v1/contacts/{cid}")).json()["version"] == 2
        return
    assert r.status_code == 200, r.text
    # The withdrawal written mid-erase is kept as evidence, anonymised like the others.
    assert r.json()["ledger_entries_kept"] == 3
    assert (await api.get(f"/v1/contacts/{cid}")).status_code == 404
    assert await db["consent_ledger"].count_documents({"customer_id": cid}) == 0


async def _import_then(
    app: FastAPI, api: httpx.AsyncClient, during: Callable[[str], Awaitable[None]]
) -> str:
    """Import one new contact, running `during` once it is stored and before the import
    publishes its snapshot; the contact's id."""
    repo = app.state.repo
    real = repo.create_many
    row = contact()

    async def create_then(docs: Any) -> set[int]:
        existing: set[int] = await real(docs)
        await during(row["customer_id"])
        return existing

    repo.create_many = create_then
    r = await api.post("/v1/contacts/import", json=[row])
    assert r.json()["accepted"] == 1, r.text
    return str(row["customer_id"])


async def test_a_stop_between_an_imports_insert_and_its_publish_is_not_undone_on_the_topic(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    async def stop(cid: str) -> None:
        await app.state.handlers.on_reply(reply(cid, "stop", "STOP"))

    cid = await _import_then(app, api, stop)

    async def stop_published_last() -> bool:
        await snapshots.poll()
        return 1 in snapshots.history(cid) and snapshots.history(cid)[-1] == 2

    # The STOP's snapshot, the import's older one, then the STOP's again.
    await eventually(stop_published_last, within=10)
    assert snapshots.history(cid) == [2, 1, 2]
    latest = snapshots.latest(cid)
    assert isinstance(latest, ContactPreferences)
    assert latest.consents == {"service-updates": {"email": True, "sms": False}}


async def test_an_erase_between_an_imports_insert_and_its_publish_leaves_a_tombstone_last(
    app: FastAPI, api: httpx.AsyncClient, snapshots: Snapshots
) -> None:
    async def erase(cid: str) -> None:
        r = await api.delete(f"/v1/contacts/{cid}")
        assert r.status_code == 200, r.text

    cid = await _import_then(app, api, erase)

    async def tombstone_last() -> bool:
        await snapshots.poll()
        return 1 in snapshots.history(cid) and snapshots.history(cid)[-1] == "tombstone"

    # The erase's tombstone, the import's snapshot of the erased contact, the tombstone again.
    await eventually(tombstone_last, within=10)
    assert snapshots.history(cid) == ["tombstone", 1, "tombstone"]
