"""Contacts API: create, replace, patch, read, list, bulk import, consent history, GDPR export
and erase. Writes take an Idempotency-Key; replace/patch/erase take If-Match."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Annotated, Any
from urllib.parse import quote

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from pymongo.errors import PyMongoError

from herald_contracts import ContactPreferences, utc_now
from herald_kit import (
    Conflict,
    HeraldError,
    InvalidInput,
    MalformedRequest,
    NotFound,
    PreconditionFailed,
    Principal,
    broker_wait,
    require_scopes,
)
from herald_preferences.adapters.repository import ContactRepository
from herald_preferences.api.centre import link_signer
from herald_preferences.api.idempotency import idempotent
from herald_preferences.config import Settings
from herald_preferences.domain.contacts import ContactIn
from herald_preferences.domain.ledger import fold, withdrawn_by_customer
from herald_preferences.domain.service import as_input, erased, next_contact, snapshot
from herald_preferences.messaging.outbox import Outbox

log = logging.getLogger("herald.preferences.api")
router = APIRouter(prefix="/v1/contacts", tags=["contacts"])
Reader = Annotated[Principal, Depends(require_scopes("preferences:read"))]
Writer = Annotated[Principal, Depends(require_scopes("preferences:write"))]
Admin = Annotated[Principal, Depends(require_scopes("preferences:admin"))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Same key and body replay the first response; a different body is 422.",
    ),
]
IfMatch = Annotated[
    str | None, Header(alias="If-Match", description="The ETag read; 412 when it changed since.")
]
WRITE_ATTEMPTS = 5
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/problem+json": {}}}
    for code, text in {
        400: "Malformed body.",
        404: "No such contact.",
        409: "The contact exists, or the key is in use.",
        412: "If-Match does not match the current ETag.",
        413: "Body over the size limit.",
        422: "A field is invalid (named in `field`).",
    }.items()
}


def _repo(request: Request) -> ContactRepository:
    repo: ContactRepository = request.app.state.repo
    return repo


def _outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


Repo = Annotated[ContactRepository, Depends(_repo)]
Out = Annotated[Outbox, Depends(_outbox)]


def _etag(version: int) -> str:
    return f'"{version}"'


def _matches(if_match: str, version: int) -> bool:
    tags = [t.strip().removeprefix("W/").strip('"') for t in if_match.split(",")]
    return "*" in tags or str(version) in tags


def _contact_response(doc: dict[str, Any], status: int = 200, **headers: str) -> JSONResponse:
    snap = snapshot(doc)
    return JSONResponse(
        snap.model_dump(mode="json"),
        status_code=status,
        headers={"ETag": _etag(snap.version), **headers},
    )


def _live(doc: dict[str, Any] | None, customer_id: str) -> dict[str, Any]:
    if doc is None or doc.get("erased"):
        raise NotFound(f"no contact {customer_id!r}", field="customer_id")
    return doc


class ContactPage(BaseModel):
    """One page of contacts; pass `next` as `after` for the following page."""

    items: list[ContactPreferences]
    next: str | None = Field(default=None, description="Cursor for the next page, if any.")


class LedgerEntryOut(BaseModel):
    """One consent ledger entry. topic '*' means every topic of the channel (STOP/START)."""

    topic: str
    channel: str
    granted: bool
    source: str
    actor: str
    at: Any
    proof: str | None = None
    version: int


class ConsentHistory(BaseModel):
    """The ledger of one customer and the consent derived from it."""

    customer_id: str
    current: dict[str, dict[str, bool]] = Field(description="Folded from the entries below.")
    stopped_channels: list[str]
    withdrawn: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per topic, the channels the customer withdrew themselves (unsubscribe "
        "link, keyword, preference centre). Like a stopped channel, an API write or an import "
        "does not grant them again; the customer does, in the preference centre.",
    )
    entries: list[LedgerEntryOut]


class RowError(BaseModel):
    """Why one import row was not applied."""

    row: int = Field(description="0-based row number (an NDJSON body's blank lines are skipped).")
    line: int | None = Field(
        default=None,
        description="1-based line of the row in an NDJSON body, blank lines counted (what an "
        "editor shows); none for a JSON array.",
    )
    customer_id: str | None = None
    status: int
    field: str | None = None
    detail: str


class ImportResult(BaseModel):
    """Outcome of a bulk import: each row is applied whole or not at all."""

    accepted: int
    rejected: int
    errors: list[RowError]


class PreferenceLink(BaseModel):
    """A signed, expiring link to the customer's preference centre."""

    url: str
    token: str
    expires_in_seconds: int


async def _write(
    request: Request,
    repo: ContactRepository,
    outbox: Outbox,
    customer_id: str,
    if_match: str | None,
    build: Any,
    actor: str,
) -> JSONResponse:
    """Read, build the next document, compare-and-set on the version, flush. Without If-Match a
    concurrent change is retried on the fresh state; with it, it is 412."""
    settings: Settings = request.app.state.settings
    for _ in range(WRITE_ATTEMPTS):
        current = _live(await repo.get(customer_id), customer_id)
        if if_match is not None and not _matches(if_match, current["version"]):
            raise PreconditionFailed("the contact changed since it was read", field="If-Match")
        ledger = await repo.ledger_of(customer_id, current)
        body: ContactIn = build(current, ledger)
        doc = next_contact(
            body,
            current=current,
            ledger=ledger,
            region=settings.default_region,
            source="api",
            actor=actor,
            now=utc_now(),
        )
        claim = await outbox.intend(customer_id)
        try:
            stored = await repo.replace(doc, expected_version=current["version"])
        except PreconditionFailed:
            if if_match is not None:
                raise
            continue
        await outbox.try_flush(customer_id, claim)
        return _contact_response(stored)
    raise Conflict("the contact kept changing; try again", field="customer_id")


@router.post(
    "",
    status_code=201,
    summary="Create a contact.",
    response_model=ContactPreferences,
    responses=PROBLEMS,
)
async def create_contact(
    request: Request,
    body: ContactIn,
    repo: Repo,
    outbox: Out,
    who: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a contact, record its consents in the ledger and publish its snapshot."""

    async def run() -> Response:
        settings: Settings = request.app.state.settings
        if await repo.get(body.customer_id) is not None:
            raise Conflict(f"contact {body.customer_id!r} exists", field="customer_id")
        doc = next_contact(
            body,
            current=None,
            ledger=await repo.ledger_of(body.customer_id),
            region=settings.default_region,
            source="api",
            actor=who.name,
            now=utc_now(),
        )
        claim = await outbox.intend(body.customer_id)
        await repo.create(doc)
        await outbox.try_flush(body.customer_id, claim)
        return _contact_response(
            doc, 201, Location=f"/v1/contacts/{quote(body.customer_id, safe='')}"
        )

    return await idempotent(request, who, idempotency_key, run, customer_id=body.customer_id)


@router.put(
    "/{customer_id}",
    summary="Replace a contact (If-Match for concurrency).",
    response_model=ContactPreferences,
    responses=PROBLEMS,
)
async def replace_contact(
    request: Request,
    customer_id: str,
    body: ContactIn,
    repo: Repo,
    outbox: Out,
    who: Writer,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Replace a contact's preferences; consent changes go to the ledger."""
    if body.customer_id != customer_id:
        raise InvalidInput("customer_id must match the path", field="customer_id")

    async def run() -> Response:
        return await _write(
            request, repo, outbox, customer_id, if_match, lambda _current, _ledger: body, who.name
        )

    return await idempotent(request, who, idempotency_key, run, customer_id=customer_id)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def withdraw_nulls(patch: dict[str, Any], consents: dict[str, dict[str, bool]]) -> dict[str, Any]:
    """The patch with `null` under `consents` turned into `false`.

    Merge patch would drop the key, and a consent not named is left as it is (ledger.diff: a
    caller cannot silently erase evidence), so removing one must be a withdrawal the ledger
    records. `consents.<topic>: null` withdraws every channel of the topic, `consents: null`
    every consent.
    """
    if "consents" not in patch:
        return patch
    given = patch["consents"]
    if given is None:
        given = dict.fromkeys(consents)
    if not isinstance(given, dict):
        return patch  # validation names the field
    out: dict[str, Any] = {}
    for topic, channels in given.items():
        if channels is None:
            out[topic] = dict.fromkeys(consents.get(topic, {}), False)
        elif isinstance(channels, dict):
            out[topic] = {ch: False if ok is None else ok for ch, ok in channels.items()}
        else:
            out[topic] = channels
    return {**patch, "consents": out}


@router.patch(
    "/{customer_id}",
    summary="Change part of a contact (JSON merge patch, RFC 7386).",
    response_model=ContactPreferences,
    responses=PROBLEMS,
)
async def patch_contact(
    request: Request,
    customer_id: str,
    patch: Annotated[
        dict[str, Any],
        Body(
            media_type="application/merge-patch+json",
            examples=[
                {"ranking": ["email", "sms"], "quiet_hours": {"start": "22:00", "end": "07:30"}}
            ],
        ),
    ],
    repo: Repo,
    outbox: Out,
    who: Writer,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Merge the given fields onto the contact; `null` removes one (under `consents`, withdraws
    it: false in the ledger)."""
    if patch.get("customer_id", customer_id) != customer_id:
        raise InvalidInput("customer_id cannot change", field="customer_id")

    def build(current: dict[str, Any], ledger: list[dict[str, Any]]) -> ContactIn:
        base = as_input(current, ledger)
        merged = merge_patch(base, withdraw_nulls(patch, base["consents"]))
        try:
            return ContactIn.model_validate(merged)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
            ) from exc

    async def run() -> Response:
        return await _write(request, repo, outbox, customer_id, if_match, build, who.name)

    return await idempotent(request, who, idempotency_key, run, customer_id=customer_id)


@router.get(
    "/{customer_id}",
    summary="Read a contact.",
    response_model=ContactPreferences,
    responses=PROBLEMS,
)
async def get_contact(customer_id: str, repo: Repo, who: Reader) -> Response:
    """A contact's current preferences, with its ETag."""
    return _contact_response(_live(await repo.get(customer_id), customer_id))


@router.get("", summary="List contacts, by customer id.")
async def list_contacts(
    repo: Repo,
    who: Reader,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[str | None, Query(description="The `next` of the previous page.")] = None,
) -> ContactPage:
    """A page of contacts."""
    docs = await repo.page(after=after, limit=limit + 1)
    more = len(docs) > limit
    docs = docs[:limit]
    return ContactPage(
        items=[snapshot(d) for d in docs], next=docs[-1]["_id"] if more and docs else None
    )


@router.get(
    "/{customer_id}/consents",
    summary="Consent history: the ledger and the consent derived from it.",
    responses=PROBLEMS,
)
async def consent_history(customer_id: str, repo: Repo, who: Reader) -> ConsentHistory:
    """Every ledger entry in order, and the current consent folded from them (not the cache)."""
    current = _live(await repo.get(customer_id), customer_id)
    stored = await repo.ledger_of(customer_id, current)
    seen = {e["_id"] for e in stored}
    entries = stored + [e for e in current.get("pending", []) if e["_id"] not in seen]
    consent = fold(entries)
    return ConsentHistory(
        customer_id=customer_id,
        current=consent.effective(),
        stopped_channels=sorted(consent.stopped),
        withdrawn=withdrawn_by_customer(entries),
        entries=[LedgerEntryOut.model_validate(e) for e in entries],
    )


def _rows(request_body: bytes, content_type: str) -> tuple[list[Any], list[int] | None]:
    """The rows of an import body, and for NDJSON the 1-based line of each."""
    if "ndjson" in content_type or "jsonl" in content_type:
        rows: list[Any] = []
        lines: list[int] = []
        for n, line in enumerate(request_body.splitlines()):
            if not line.strip():
                continue
            lines.append(n + 1)
            try:
                rows.append(json.loads(line))
            except ValueError:  # not JSON, or not UTF-8
                rows.append(_BadRow(f"line {n + 1} is not JSON"))
        return rows, lines
    try:
        parsed = json.loads(request_body)
    except ValueError as exc:  # not JSON, or not UTF-8
        raise MalformedRequest("the body is not JSON", field="body") from exc
    if not isinstance(parsed, list):
        raise InvalidInput("a JSON array of contacts is expected", field="body")
    return parsed, None


class _BadRow:
    def __init__(self, detail: str) -> None:
        self.detail = detail


@router.post(
    "/import",
    summary="Bulk import new contacts (NDJSON or a JSON array); per-row errors.",
    responses=PROBLEMS,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "application/json": {
                    "schema": {"type": "array", "items": {"$ref": "#/components/schemas/ContactIn"}}
                },
            }
        }
    },
)
async def import_contacts(
    request: Request,
    repo: Repo,
    outbox: Out,
    who: Writer,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create each valid row whole (one document write per row); report the others."""
    settings: Settings = request.app.state.settings

    async def run() -> Response:
        rows, lines = _rows(await request.body(), request.headers.get("content-type", ""))
        if len(rows) > settings.import_max_rows:
            raise InvalidInput(f"at most {settings.import_max_rows} rows per request", field="body")
        errors: list[RowError] = []
        docs: list[dict[str, Any]] = []
        rows_of: list[int] = []
        seen: set[str] = set()
        now = utc_now()
        batch = uuid.uuid4().hex
        for n, raw in enumerate(rows):
            cid = raw.get("customer_id") if isinstance(raw, dict) else None
            cid = cid if isinstance(cid, str) else None
            if isinstance(raw, _BadRow):
                errors.append(RowError(row=n, status=400, field="body", detail=raw.detail))
                continue
            try:
                body = ContactIn.model_validate(raw)
                if body.customer_id in seen:
                    raise Conflict("customer_id repeated in this import", field="customer_id")
                doc = next_contact(
                    body,
                    current=None,
                    ledger=(),
                    region=settings.default_region,
                    source="import",
                    actor=who.name,
                    now=now,
                    proof=f"import:{batch}",
                    id_suffix=batch,
                )
            except ValidationError as exc:
                first = exc.errors()[0]
                errors.append(
                    RowError(
                        row=n,
                        customer_id=cid,
                        status=422,
                        field=".".join(str(p) for p in first["loc"]) or "body",
                        detail=str(first["msg"]),
                    )
                )
                continue
            except HeraldError as exc:
                errors.append(
                    RowError(
                        row=n,
                        customer_id=cid,
                        status=exc.status,
                        field=exc.field,
                        detail=exc.detail,
                    )
                )
                continue
            seen.add(body.customer_id)
            docs.append(doc)
            rows_of.append(n)
        marker, existing = await repo.create_imported(batch, docs, now=utc_now())
        for i in sorted(existing):
            errors.append(
                RowError(
                    row=rows_of[i],
                    customer_id=docs[i]["_id"],
                    status=409,
                    field="customer_id",
                    detail="contact exists",
                )
            )
        created = [d for i, d in enumerate(docs) if i not in existing]
        try:
            async with broker_wait(settings.publish_wait_seconds):
                await outbox.flush_new(created, marker)
        except (KafkaError, PyMongoError, OSError):
            # Stored, and the batch marker stays: the republisher copies and publishes them.
            log.warning("import flush deferred to the republisher", extra={"rows": len(created)})
        errors.sort(key=lambda e: e.row)
        if lines is not None:
            for error in errors:
                error.line = lines[error.row]
        result = ImportResult(accepted=len(created), rejected=len(errors), errors=errors)
        return JSONResponse(result.model_dump(mode="json"))

    return await idempotent(request, who, idempotency_key, run, customer_id=None)


@router.get(
    "/{customer_id}/export",
    summary="GDPR export: everything held about a customer.",
    responses=PROBLEMS,
)
async def export_contact(customer_id: str, repo: Repo, who: Admin) -> dict[str, Any]:
    """The stored contact, its snapshot and its whole consent ledger, as JSON."""
    doc = _live(await repo.get(customer_id), customer_id)
    stored = await repo.ledger_of(customer_id, doc)
    seen = {e["_id"] for e in stored}
    ledger = stored + [e for e in doc.get("pending", []) if e["_id"] not in seen]
    contact = {k: v for k, v in doc.items() if k not in ("pending", "_id", "ledger_ids")}
    exported: dict[str, Any] = json.loads(
        json.dumps(
            {
                "customer_id": customer_id,
                "exported_at": utc_now(),
                "contact": contact,
                "consent_ledger": [{k: v for k, v in e.items() if k != "_id"} for e in ledger],
            },
            default=lambda o: o.isoformat(),
        )
    )
    return exported


@router.delete(
    "/{customer_id}",
    summary="GDPR erase: remove PII, keep the ledger as anonymised evidence, publish a tombstone.",
    responses=PROBLEMS,
)
async def erase_contact(
    request: Request,
    customer_id: str,
    repo: Repo,
    outbox: Out,
    who: Admin,
    if_match: IfMatch = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Erase a customer. Safe to repeat: a second erase finishes one interrupted midway."""
    settings: Settings = request.app.state.settings

    async def run() -> Response:
        claim: int | None = None
        # Like _write: without If-Match, a write landing between the read and the replace is
        # retried on the fresh state (its queued entries copied too); with it, it is 412.
        for _ in range(WRITE_ATTEMPTS):
            current = await repo.get(customer_id)
            if current is None or current.get("erased"):
                break
            if if_match is not None and not _matches(if_match, current["version"]):
                raise PreconditionFailed("the contact changed since it was read", field="If-Match")
            # Evidence first: queued entries join the ledger before the document loses them.
            await repo.copy_to_ledger(current.get("pending", []))
            claim = await outbox.intend(customer_id)
            try:
                await repo.replace(
                    erased(current, now=utc_now()), expected_version=current["version"]
                )
            except PreconditionFailed:
                if if_match is not None:
                    raise
                continue
            break
        else:
            raise Conflict("the contact kept changing; try again", field="customer_id")
        secret = (
            settings.pseudonym_secret.get_secret_value()
            or settings.link_secret.get_secret_value()
            or "herald-dev"
        )
        kept = await repo.anonymise_ledger(customer_id, secret=secret.encode())
        if current is None and kept == 0:
            raise NotFound(f"no contact {customer_id!r}", field="customer_id")
        await outbox.try_flush(customer_id, claim)
        return JSONResponse(
            {"customer_id": customer_id, "erased": True, "ledger_entries_kept": kept}
        )

    return await idempotent(request, who, idempotency_key, run, customer_id=None)


@router.post(
    "/{customer_id}/preference-link",
    summary="A signed, expiring link to the customer's preference centre.",
    responses=PROBLEMS,
)
async def preference_link(
    request: Request, customer_id: str, repo: Repo, who: Writer
) -> PreferenceLink:
    """Sign a link naming the customer and the purpose 'preferences'."""
    settings: Settings = request.app.state.settings
    _live(await repo.get(customer_id), customer_id)
    token = link_signer(settings).sign({"c": customer_id, "p": "preferences"})
    return PreferenceLink(
        url=f"{settings.base_url()}/p/{token}",
        token=token,
        expires_in_seconds=settings.link_max_age_seconds,
    )
