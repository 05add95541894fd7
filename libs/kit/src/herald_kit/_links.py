"""Signed, expiring links for customers (preference centre, case status page), via itsdangerous."""

from __future__ import annotations

from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from herald_kit._errors import HeraldError


class LinkInvalid(HeraldError):
    """The token was tampered with, or signed for another purpose."""

    status = 403
    title = "Link not valid"


class LinkExpired(HeraldError):
    """The token was genuine but is too old."""

    status = 410
    title = "Link expired"


def customer_page_headers() -> dict[str, str]:
    """The headers of every page a customer reaches through a signed link (status page,
    preference centre, unsubscribe confirmation): a new dict each time, for the caller to keep.

    Never cached, and never sent on as a referrer: the token is in the URL. Nothing but the
    page's own inline style and its forms posting back to the service; no other site may frame
    the page (a framed button can be clicked through unseen), which X-Frame-Options also says
    to browsers that predate frame-ancestors.
    """
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "X-Frame-Options": "DENY",
    }


class LinkSigner:
    """Sign and verify payloads for one purpose ('preferences', 'case-status', ...)."""

    def __init__(self, secret: str, purpose: str) -> None:
        if not secret:
            raise ValueError("a link secret is required to sign customer links")
        self._s = URLSafeTimedSerializer(secret, salt=f"herald:{purpose}")

    def sign(self, payload: dict[str, Any]) -> str:
        """A URL-safe token carrying payload and the time it was signed."""
        return str(self._s.dumps(payload))

    def verify(self, token: str, *, max_age_seconds: int) -> dict[str, Any]:
        """The payload; LinkExpired or LinkInvalid otherwise."""
        try:
            data = self._s.loads(token, max_age=max_age_seconds)
        except SignatureExpired as exc:
            raise LinkExpired("This link has expired; ask for a new one.", field="token") from exc
        except BadSignature as exc:
            raise LinkInvalid("This link is not valid.", field="token") from exc
        if not isinstance(data, dict):
            raise LinkInvalid("This link is not valid.", field="token")
        return data
