"""In-memory record of what the sandbox received: nothing here is durable by design."""

from __future__ import annotations

import secrets
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
            "error_code": None,
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


class Outbox:
    """Everything the sandbox captured, per channel."""

    def __init__(self) -> None:
        self.sms: list[SmsRecord] = []

    def add_sms(self, **kwargs: Any) -> SmsRecord:
        """Record an accepted SMS."""
        rec = SmsRecord(sid=_sid("SM"), **kwargs)
        self.sms.append(rec)
        return rec

    def find_sms(self, to: str | None = None) -> list[SmsRecord]:
        """SMS sent to a number (all when None)."""
        return [m for m in self.sms if to is None or m.to == to]
