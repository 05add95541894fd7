"""Twilio webhook signatures (X-Twilio-Signature over the public URL and the form fields)."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

from herald_kit import HeraldError, MalformedRequest


class BadSignature(HeraldError):
    """The request is not signed by Twilio with our auth token."""

    status = 403
    title = "Forbidden"


async def validate_signed_form(request: Request, *, public_base: str, auth_token: str) -> FormData:
    """The form fields of a request Twilio signed; 403 when unsigned or tampered, 400 if malformed.

    The signed URL is the public one Twilio called (`public_base` + path + query), rebuilt from
    configuration because behind a proxy the request's own host and scheme are the proxy's.
    """
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("application/x-www-form-urlencoded"):
        raise MalformedRequest("expected an application/x-www-form-urlencoded body", field="body")
    try:
        form = await request.form()
    except Exception as exc:  # starlette raises several types for undecodable bodies
        raise MalformedRequest("the form body cannot be parsed", field="body") from exc
    url = public_base + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    signature = request.headers.get("x-twilio-signature", "")
    params = {k: str(v) for k, v in form.multi_items()}
    validator = RequestValidator(auth_token)
    if not signature or not validator.validate(url, params, signature):
        raise BadSignature("missing or invalid X-Twilio-Signature", field="X-Twilio-Signature")
    return form
