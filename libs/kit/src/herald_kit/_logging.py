"""JSON logs with a correlation id, and masking of phone numbers, email addresses and secrets."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from herald_kit._context import event_id_var, trace_var

# Internationalised addresses too (zoë@exämple.de): any run without spaces, quotes or brackets.
_EMAIL = re.compile(r"[^\s@\"'<>()\[\],;:]+@[^\s@\"'<>()\[\],;:]+\.[^\s@\"'<>()\[\],;:.]{2,}")
# A run of 7+ digits, optionally with a leading + and common separators (up to two between
# digits, as in "+1 (555) 010-4477"): phone-shaped.
_PHONE = re.compile(r"(?<![\w-])\+?\(?\d(?:[\s().\-]{0,2}\d){6,}(?![\w-])")
_SECRET = re.compile(
    r"(?i)(\b(?:token|secret|password|passwd|api[_-]?key|authorization|auth_token|sig(?:nature)?)"
    r"\b[\"']?\s*[:=]\s*[\"']?)(?:Bearer\s+|Basic\s+)?[^\s\"'&,;}]+"
)
_BEARER = re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


_ENCODED = re.compile(r"%(2[Bb]|40)")


def mask(text: str) -> str:
    """Replace email addresses, phone numbers and secrets with placeholders.

    URL-encoded '+' and '@' (paths and query strings) are decoded first so they mask too.
    """
    text = _ENCODED.sub(lambda m: "+" if m.group(1).lower() == "2b" else "@", text)
    text = _SECRET.sub(r"\1***", text)
    text = _BEARER.sub(r"\1 ***", text)
    text = _EMAIL.sub("<email>", text)
    return _PHONE.sub("<phone>", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, masked, with trace and event ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as masked JSON."""
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        trace = trace_var.get()
        if trace is not None:
            payload["trace_id"] = trace.trace_id
        event_id = event_id_var.get()
        if event_id is not None:
            payload["event_id"] = event_id
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return mask(json.dumps(payload, default=str, ensure_ascii=False))


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send every log record to stdout as masked JSON."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "pymongo", "apscheduler", "twilio", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # Access lines carry raw paths and query strings (ids, tokens); requests are counted in
    # herald_http_requests_total instead.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
