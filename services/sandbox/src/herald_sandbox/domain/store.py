"""In-memory record of what the sandbox received: nothing here is durable by design."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class SmsRecord:
    """One message accepted on the fake Messages resource."""

    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    status: str
    status_callback: str | None
    num_segments: int
    date_created: datetime = field(default_factory=lambda: datetime.now(UTC))
    accepted_at: float = 0.0  # monotonic clock, for pacing measurements
    error_code: int | None = None

    def as_twilio(self) -> dict[str, Any]:
        """The resource as Twilio's REST API renders it."""
        created = self.date_created.strftime("%a, %d %b %Y %H:%M:%S +0000")
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "to": self.to,
            "from": self.from_,
            "body": self.body,
            "status": self.status,
            "num_segments": str(self.num_segments),
            "num_media": "0",
            "direction": "outbound-api",
            "date_created": created,
            "date_updated": created,
            "date_sent": None,
            "error_code": self.error_code,
            "error_message": None,
            "price": None,
            "price_unit": "USD",
            "messaging_service_sid": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{self.sid}.json",
            "subresource_uris": {},
        }

    def as_json(self) -> dict[str, Any]:
        """The record for the sandbox's own JSON API."""
        d = asdict(self)
        d["from"] = d.pop("from_")
        d["date_created"] = self.date_created.isoformat()
        return d


@dataclass
class CallRecord:
    """One call placed on the fake Calls resource, and what happened on it."""

    sid: str
    account_sid: str
    to: str
    from_: str
    url: str
    status: str
    status_callback: str | None
    machine_detection: str | None
    answered_by: str | None = None
    twiml: list[str] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    date_created: datetime = field(default_factory=lambda: datetime.now(UTC))
    accepted_at: float = field(default_factory=time.monotonic)  # for pacing measurements

    def as_twilio(self) -> dict[str, Any]:
        """The resource as Twilio's REST API renders it."""
        created = self.date_created.strftime("%a, %d %b %Y %H:%M:%S +0000")
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "status": self.status,
            "direction": "outbound-api",
            "answered_by": self.answered_by,
            "date_created": created,
            "date_updated": created,
            "start_time": None,
            "end_time": None,
            "duration": None,
            "price": None,
            "price_unit": "USD",
            "parent_call_sid": None,
            "phone_number_sid": None,
            "caller_name": None,
            "forwarded_from": None,
            "group_sid": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Calls/{self.sid}.json",
            "subresource_uris": {},
        }

    def as_json(self) -> dict[str, Any]:
        """The record for the sandbox's own JSON API."""
        d = asdict(self)
        d["from"] = d.pop("from_")
        d["date_created"] = self.date_created.isoformat()
        return d


class Outbox:
    """Everything the sandbox captured, per channel."""

    def __init__(self) -> None:
        self.sms: list[SmsRecord] = []
        self.calls: dict[str, CallRecord] = {}
        # Numbers that texted STOP: Twilio refuses to message them (error 21610) until START.
        self.opted_out: set[str] = set()

    def add_sms(self, **kwargs: Any) -> SmsRecord:
        """Record an accepted SMS."""
        rec = SmsRecord(sid=_sid("SM"), **kwargs)
        self.sms.append(rec)
        return rec

    def find_sms(self, to: str | None = None) -> list[SmsRecord]:
        """SMS sent to a number (all when None)."""
        return [m for m in self.sms if to is None or m.to == to]

    def add_call(self, **kwargs: Any) -> CallRecord:
        """Record a placed call."""
        rec = CallRecord(sid=_sid("CA"), **kwargs)
        self.calls[rec.sid] = rec
        return rec

    def find_calls(self, to: str | None = None) -> list[CallRecord]:
        """Calls placed to a number (all when None), oldest first."""
        return [c for c in self.calls.values() if to is None or c.to == to]
