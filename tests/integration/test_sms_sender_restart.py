"""Killing the sms-sender (kill -9) mid-batch and restarting it sends no message twice."""

from __future__ import annotations

import asyncio
import random
from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pymongo import AsyncMongoClient
from twilio_support import (
    SANDBOX_SID,
    SANDBOX_TOKEN,
    Collector,
    outbound_sms,
    producer,
    serving,
)

from herald_contracts import DELIVERY_STATUS, OUTBOUND_SMS
from herald_devstack import BY_NAME, Stack, StackConfig
from herald_sandbox.app import create_app as sandbox_app
from herald_sandbox.config import Settings as SandboxSettings
from support import eventually, free_port, unique_phone


async def test_killed_mid_batch_then_restarted_sends_each_message_once(
    infra: dict[str, str],
    namespace: str,
    db_name: Callable[[str], str],
    mongo: AsyncMongoClient[dict[str, Any]],
    tmp_path: Path,
) -> None:
    sb_port = free_port()
    sandbox_settings = SandboxSettings(
        port=sb_port,
        mongo_db="",
        twilio_account_sid=SANDBOX_SID,
        twilio_auth_token=SANDBOX_TOKEN,
        callback_delay_seconds=0.01,
    )
    async with (
        serving(sandbox_app(sandbox_settings), sb_port) as sandbox,
        httpx.AsyncClient(timeout=10) as http,
        producer(infra["kafka"], namespace) as prod,
        Collector(infra["kafka"], namespace, DELIVERY_STATUS) as statuses,
    ):
        db = db_name("sms_sender")
        suffix = db.removeprefix("herald_sms_sender")
        stack = Stack(
            StackConfig(
                kafka_bootstrap=infra["kafka"],
                # A bound on every database round trip: under load FerretDB can leave a reply
                # unanswered; the handler then retries (and reconciles) instead of hanging.
                mongo_uri=infra["mongo"].rstrip("/") + "/?socketTimeoutMS=5000",
                namespace=namespace,
                db_suffix=suffix,
                port_offset=random.randrange(17_000, 24_000, 10),
                log_dir=tmp_path,
                extra_env={
                    "HERALD_SMS_SENDER_MONGO_DB": db,
                    "HERALD_SMS_SENDER_TWILIO_BASE_URL": sandbox,
                    "HERALD_SMS_SENDER_RATE_PER_SECOND": "30",
                    "HERALD_SMS_SENDER_CONCURRENCY": "8",
                    "HERALD_SMS_SENDER_TWILIO_TIMEOUT_SECONDS": "3",
                },
            ),
            services=[BY_NAME["sandbox"], BY_NAME["sms-sender"]],  # only the sender is started
        )
        # env_for() names the database from the suffix; extra_env pins it to ours.
        phones = [unique_phone() for _ in range(50)]
        msgs = [outbound_sms(phones[i % 50], customer_id=f"cust-{i % 50}") for i in range(120)]
        ids = [m.message_id for m in msgs]
        ledger = mongo[db]["send_ledger"]

        async def in_sandbox() -> list[dict[str, Any]]:
            r = await http.get(f"{sandbox}/sandbox/api/sms")
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        try:
            stack.start_one("sms-sender")
            await asyncio.to_thread(stack.wait_ready, 60)
            for m in msgs:
                await prod.publish(OUTBOUND_SMS, m, key=m.customer_id)
            await eventually(lambda: _at_least(in_sandbox, 30), within=60, interval=0.05)
            stack.kill("sms-sender")  # SIGKILL: no shutdown, no commit, requests cut mid-flight
            killed_at = len(await in_sandbox())
            assert killed_at < len(msgs), "the kill came too late to test anything"

            stack.start_one("sms-sender")
            await asyncio.to_thread(stack.wait_ready, 60)

            async def all_final() -> bool:
                rows = await ledger.find({"_id": {"$in": ids}}).to_list(None)
                return len(rows) == len(ids) and all(
                    r["status"] in ("sent", "unknown", "failed") for r in rows
                )

            try:
                await eventually(all_final, within=60, interval=0.5)
                settled = True
            except AssertionError:
                settled = False
        finally:
            stack.stop()

        rows = {r["_id"]: r for r in await ledger.find({"_id": {"$in": ids}}).to_list(None)}
        got = Tally(item["body"] for item in await in_sandbox())
        assert max(got.values()) == 1, "a message reached the provider twice"
        stuck = [r for r in rows.values() if r["status"] not in ("sent", "unknown", "failed")]
        for m in msgs:
            row = rows[m.message_id]
            if row["status"] == "sent":
                assert got[m.body] == 1
                assert row["provider_id"].startswith("SM")
            elif row["status"] == "sending":
                assert got[m.body] <= 1
            else:
                # Cut off before the provider saw it: reported, never silently dropped or resent.
                assert row["status"] == "unknown" and got[m.body] == 0
        assert settled, f"{len(stuck)} message(s) left in 'sending'"
        await eventually(
            lambda: (
                {s.message_id for s in statuses.items if s.status in ("sent", "unknown")}
                >= set(ids)
            ),
            within=20,
        )
        assert sum(r["status"] == "sent" for r in rows.values()) >= len(ids) - 8


async def _at_least(probe: Callable[[], Any], n: int) -> bool:
    return len(await probe()) >= n
