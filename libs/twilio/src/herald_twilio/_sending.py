"""The senders' shared steps around a provider call: back-off after 'busy', pauses, statuses."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal

from herald_contracts import DELIVERY_STATUS, Channel, DeliveryState, DeliveryStatus, utc_now
from herald_kit import (
    CircuitBreaker,
    EventProducer,
    Pacer,
    SendLedger,
    backoff,
    count_send_outcome,
)
from herald_twilio._client import ProviderBusy


def busy_delay(
    exc: ProviderBusy,
    attempt: int,
    *,
    base: float,
    cap: float,
    pacer: Pacer,
    breaker: CircuitBreaker,
    identity: str,
) -> tuple[str, float]:
    """After a 'busy' answer: hold the pacer on a 429 (else count a breaker failure); the
    error code to remember and the delay before the next attempt."""
    if exc.http_status == 429:
        pacer.hold(identity, exc.retry_after or 1.0)
    else:
        breaker.failure()
    last = exc.code or str(exc.http_status)
    return last, backoff(attempt, base=base, cap=cap, retry_after=exc.retry_after)


PauseOutcome = Literal["resumed", "expired", "taken"]

# How long a message with no deadline waits, in all, for an open circuit breaker (or for the
# verdict of the half-open trial) before it fails. A wait on the breaker sends nothing, so it
# takes none of the message's provider attempts; only its deadline, else this, bounds it.
OPEN_CIRCUIT_PATIENCE = timedelta(minutes=15)


def breaker_deadline(deadline: datetime | None, claimed_at: datetime) -> datetime:
    """Until when a message claimed at `claimed_at` may wait on the circuit breaker."""
    return deadline if deadline is not None else claimed_at + OPEN_CIRCUIT_PATIENCE


async def pause_unclaimed(
    ledger: SendLedger,
    message_id: str,
    *,
    delay: float,
    expires_at: datetime | None,
    claim: str,
) -> PauseOutcome:
    """Sleep before the next attempt unless that passes the expiry.

    'resumed': slept and claimed the row again under the token `claim`, go on (the next
    provider call still needs `start_sending` with it: another consumer may claim the row
    while this one waits for the pacer); 'expired': the next attempt would come after the
    expiry, so no further provider request (nothing slept); 'taken': after the pause the row
    could not be claimed again (another consumer took it over), so its outcome is not ours to
    record.
    """
    if expires_at is not None and utc_now() + timedelta(seconds=delay) >= expires_at:
        return "expired"
    # Nothing is in flight while we wait: a crash now must not leave the row 'sending'.
    await ledger.set(message_id, "retry")
    await asyncio.sleep(delay)
    ok, _ = await ledger.claim(message_id, now=utc_now(), meta={"claim": claim})
    return "resumed" if ok else "taken"


def gave_up_reason(outcome: PauseOutcome | None, last: str) -> str:
    """Why retrying stopped: the expiry came first, or the attempts ran out."""
    if outcome == "expired":
        return f"expired during retries (last: {last})"
    return f"gave up after retryable errors (last: {last})"


def expired_waiting(last: str, waiting: str) -> tuple[str, str]:
    """The failure code and reason of a message whose deadline passed while it waited for the
    pacer (`last`: the latest retryable failure, 'none' before any; `waiting`: "to send")."""
    if last == "none":
        return "expired", f"expired waiting {waiting}"
    return last, gave_up_reason("expired", last)


async def publish_delivery_status(
    producer: EventProducer,
    ref: dict[str, Any],
    status: DeliveryState,
    *,
    channel: Channel,
    provider_id: str | None = None,
    error_code: str | None = None,
    reason: str | None = None,
    repeat: bool = False,
) -> None:
    """Publish a delivery status of the message `ref` names; its event id makes a repeat
    recognisable downstream. `repeat`: a recorded outcome published again, not counted again
    (it was when it was decided)."""
    if not repeat:
        count_send_outcome(channel=channel, status=status)
    await producer.publish(
        DELIVERY_STATUS,
        DeliveryStatus(
            message_id=ref["message_id"],
            request_id=ref["request_id"],
            campaign_id=ref["campaign_id"],
            customer_id=ref["customer_id"],
            case_id=ref.get("case_id"),
            channel=channel,
            status=status,
            provider_id=provider_id,
            error_code=error_code,
            reason=reason,
            at=utc_now(),
        ),
        key=ref["customer_id"],
        event_id=f"{ref['message_id']}:{status}",
        subject=ref.get("case_id"),
    )


async def publish_reported_status(
    producer: EventProducer,
    ledger: SendLedger,
    ref: dict[str, Any],
    status: DeliveryState,
    *,
    channel: Channel,
    provider_id: str | None = None,
    error_code: str | None = None,
    reason: str | None = None,
) -> None:
    """Publish a status a provider's callback reported, and count it the first time only.

    Twilio retries a callback it did not see answered, so one status may be reported twice:
    it is published each time, under the same event id (consumers drop the repeat), and counted
    when the ledger first records it. Recorded after the publication: a crash in between leaves
    it unrecorded (the retried callback counts it), never published but counted."""
    await publish_delivery_status(
        producer,
        ref,
        status,
        channel=channel,
        provider_id=provider_id,
        error_code=error_code,
        reason=reason,
        repeat=True,
    )
    if await ledger.first_report(ref["message_id"], status):
        count_send_outcome(channel=channel, status=status)


SETTLED = ("sent", "failed", "unknown")


async def republish_settled(
    producer: EventProducer, ref: dict[str, Any], row: dict[str, Any], *, channel: Channel
) -> bool:
    """For a redelivered message whose ledger row is settled: publish its recorded status again
    under the same event id (a crash after the ledger write may have lost it); never resend.
    False when the row is not settled."""
    if row.get("status") not in SETTLED:
        return False
    await publish_delivery_status(
        producer,
        ref,
        row["status"],
        channel=channel,
        provider_id=row.get("provider_id"),
        error_code=row.get("error_code"),
        reason=row.get("reason"),
        repeat=True,
    )
    return True
