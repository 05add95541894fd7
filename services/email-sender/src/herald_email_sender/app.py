"""The email-sender service app."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import FastAPI

from herald_email_sender.adapters.ledger import BatchedLedger
from herald_email_sender.adapters.smtp import EmailRelay, SmtpRelay
from herald_email_sender.api import unsubscribe
from herald_email_sender.config import Settings
from herald_email_sender.messaging.outbound import EmailSendingRef, outbound_consumer
from herald_email_sender.sending import SENDER, EmailSending
from herald_kit import LinkSigner, Pacer, Runtime, build_app

log = logging.getLogger("herald.email")


def create_app(settings: Settings | None = None, relay: EmailRelay | None = None) -> FastAPI:
    """Build the email-sender app; connections open in the lifespan."""
    settings = settings or Settings()
    runtime = Runtime(settings, "email-sender")
    # The send ledger: a row per message, forgotten once no redelivery can ask for it
    # (docs/operations.md#data-retention).
    for collection in ("send_ledger", "send_outcomes"):
        runtime.forget_old(collection)
    # Unsubscribes: one row per address (a hash of it), kept while an email handed over before
    # it, or within the hold after it, can still come (a redelivery).
    runtime.forget_old(
        "opt_outs",
        keep=timedelta(seconds=settings.ledger_retention_seconds + settings.opt_out_hold_seconds),
    )
    app = build_app(
        settings,
        runtime,
        title="Herald email-sender",
        description="Sends email through an SMTP relay; RFC 8058 one-click unsubscribe.",
        routers=[unsubscribe.router],
    )
    secret = settings.link_secret.get_secret_value()
    app.state.signer = LinkSigner(secret, "unsubscribe") if secret else None
    # Where an unsubscribe is kept by address (set once the database is open).
    app.state.ledger = None
    ref = EmailSendingRef()
    outbound = outbound_consumer(settings, runtime.producer, ref)
    # The rate is per relay across every replica: this replica paces at its share of it, the
    # part of the outbound partitions it owns.
    pacer = Pacer(settings.rate_per_second, settings.rate_burst, name=SENDER)
    outbound.on_assignment(pacer.follow)
    runtime.consumers.append(outbound)

    @runtime.on_start
    async def _wire() -> None:
        if app.state.signer is None:
            log.warning("no link secret: emails go out without List-Unsubscribe")
        ledger = BatchedLedger(runtime.db)
        await ledger.ensure_indexes()
        app.state.ledger = ledger
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        app.state.relay = relay or SmtpRelay(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=password,
            timeout=settings.smtp_timeout_seconds,
            pool_size=settings.smtp_pool_size,
            validate_certs=settings.smtp_validate_certs,
            ca_file=settings.smtp_ca_file,
        )
        app.state.sending = EmailSending(
            ledger=ledger,
            relay=app.state.relay,
            producer=runtime.producer,
            settings=settings,
            signer=app.state.signer,
            pacer=pacer,
        )
        ref.set(app.state.sending)

    @runtime.on_stop
    async def _close() -> None:
        await app.state.relay.close()

    return app
