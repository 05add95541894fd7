"""Reading what another version of Herald wrote: fields this version does not know are ignored.

Herald's event bodies and stored rows only grow within a v1 topic or collection (new optional
fields), so that old and new replicas can run side by side during a rolling update. The models
themselves forbid unknown fields, which is right for input from outside (an HTTP body, an event
a backend publishes to events.inbound): a misspelt field is named back to its sender instead of
being dropped. What Herald wrote itself is read here instead: a field added by a newer version,
at any depth, is ignored (counted, and logged at debug by name, never by value), while any other
violation still fails as before.

Values of a `Literal` or enum field are not relaxed: a value this version does not know is one
it cannot act on correctly (a reply's intent, a delivery status), so a new value is only ever
published once every consumer reads it (docs/operations.md, "Upgrading").
"""

from __future__ import annotations

import logging
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from herald_kit._metrics import UNKNOWN_FIELDS, labelled

log = logging.getLogger("herald.compat")
M = TypeVar("M", bound=BaseModel)


def validate_own(model: type[M], data: object, *, kind: str) -> M:
    """`data` (JSON, or a document read back from the database) as `model`, fields unknown to
    this version ignored at any depth; ValidationError for anything else wrong with it.

    `kind` names what is read, for the count and the log: an event type, a row's collection.
    """
    try:
        # As the model says first: what this version wrote itself costs nothing more to read.
        return _validate(model, data, None)
    except ValidationError as exc:
        unknown = [
            ".".join(str(part) for part in error["loc"])
            for error in exc.errors()
            if error["type"] == "extra_forbidden"
        ]
        if not unknown:
            raise
    # Fields alone were unknown, or also a real violation: validated again with them ignored,
    # the latter still fails, and names only what is wrong.
    value = _validate(model, data, "ignore")
    labelled(UNKNOWN_FIELDS, kind).inc(len(unknown))
    log.debug("unknown fields ignored", extra={"kind": kind, "fields": unknown})
    return value


def _validate(model: type[M], data: object, extra: Literal["ignore"] | None) -> M:
    if isinstance(data, bytes | bytearray | str):
        return model.model_validate_json(data, extra=extra)
    return model.model_validate(data, extra=extra)
