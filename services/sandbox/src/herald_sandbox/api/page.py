"""GET /sandbox: a small page listing what 'went out', grouped by recipient."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, select_autoescape

from herald_sandbox.domain.store import CallRecord, Outbox

router = APIRouter(tags=["sandbox"])

# Autoescaped: captured bodies are whatever senders produced, and must not run as markup.
_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_PAGE = _ENV.from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Herald sandbox</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}
table{border-collapse:collapse;width:100%;margin-bottom:1rem}
td,th{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}
h2{margin-top:2rem}
</style></head>
<body>
<h1>What went out</h1>
<form method="get"><label>Recipient <input name="to" value="{{ to or '' }}"></label>
<button type="submit">Filter</button></form>
<p>{{ counts.sms }} SMS, {{ counts.calls }} calls, {{ counts.emails }} emails.</p>
{% for recipient, group in groups %}
<section class="recipient">
<h2>{{ recipient }}</h2>
<table><tr><th>channel</th><th>when</th><th>status</th><th>content</th></tr>
{% for item in group %}
<tr class="{{ item.channel }}"><td>{{ item.channel }}</td><td>{{ item.when }}</td>
<td>{{ item.status }}</td>
<td>{% if item.subject %}<strong>{{ item.subject }}</strong><br>{% endif %}
{{ item.body }}</td></tr>
{% endfor %}
</table></section>
{% else %}
<p>Nothing captured yet.</p>
{% endfor %}
</body></html>
"""
)


def _call_status(call: CallRecord) -> str:
    return f"{call.status} ({call.answered_by})" if call.answered_by else call.status


def _rows(request: Request) -> list[dict[str, Any]]:
    """SMS, calls and emails as uniform rows; SMS and calls come from the Twilio outbox."""
    rows: list[dict[str, Any]] = []
    outbox: Outbox = request.app.state.outbox
    for sms in outbox.sms:
        rows.append(
            {
                "channel": "sms",
                "to": sms.to,
                "when": sms.date_created,
                "status": sms.status,
                "subject": None,
                "body": sms.body,
            }
        )
    # Outbox.calls is keyed by sid; find_calls() gives the records themselves.
    for call in outbox.find_calls():
        pressed = [f"pressed {d}" for d in call.digits]
        rows.append(
            {
                "channel": "call",
                "to": call.to,
                "when": call.date_created,
                "status": _call_status(call),
                "subject": None,
                "body": " ".join([*call.twiml, *pressed]),
            }
        )
    mailbox = getattr(request.app.state, "mailbox", None)
    for email in getattr(mailbox, "emails", []):
        for to in email.to:
            rows.append(
                {
                    "channel": "email",
                    "to": to,
                    "when": email.received_at,
                    "status": "accepted",
                    "subject": email.subject,
                    "body": email.text or email.html or "",
                }
            )
    return rows


@router.get("/sandbox", response_class=HTMLResponse, summary="What went out, per recipient.")
async def page(
    request: Request, to: Annotated[str | None, Query(max_length=320)] = None
) -> HTMLResponse:
    """The page; `to` narrows it to one phone number or address."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    counts = {"sms": 0, "calls": 0, "emails": 0}
    for row in _rows(request):
        if to and row["to"].lower() != to.lower():
            continue
        counts[{"sms": "sms", "call": "calls", "email": "emails"}[row["channel"]]] += 1
        row["when"] = row["when"].strftime("%Y-%m-%d %H:%M:%S") if row["when"] else ""
        groups[row["to"]].append(row)
    ordered = sorted(groups.items())
    return HTMLResponse(_PAGE.render(groups=ordered, counts=counts, to=to))
