"""No phone number, email address, API key, token or secret in any service's log.

The test drives its own traffic first -- valid contacts and events, and hostile input that
carries personal data in the wrong places -- so it never passes on an empty log, then scans
every service log under .cache/logs/, which also holds what the e2e, chaos and fuzz runs of
the same session wrote.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest
from chaos.scenario import Scenario

from herald_devstack import SANDBOX_TOKEN, Stack
from support import READ_ONLY_KEY, TEST_KEY, eventually

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / ".cache" / "logs"
SECRETS = (
    TEST_KEY,
    READ_ONLY_KEY,
    "test-key-no-scopes",
    "herald-dev-key",
    "bench-key-all-scopes",
    "chaos-key-all-scopes",
    SANDBOX_TOKEN,
    "herald-dev-link-secret",
)
PATTERNS = {
    "phone (E.164)": re.compile(r"\+\d{8,15}(?!\d)"),
    "phone (URL-encoded)": re.compile(r"%2B\d{8,15}(?!\d)"),
    "phone (national)": re.compile(r"(?<![\d.:])\(?\d{3}\)?[ .-]?555[ .-]?\d{4}(?!\d)"),
    "email": re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"),
    "email (URL-encoded)": re.compile(r"[A-Za-z0-9._%+\-]+%40[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"),
    "bearer/basic credential": re.compile(
        r"(?i)\b(?:bearer|basic)\s+(?!\*)[A-Za-z0-9._~+/=\-]{6,}"
    ),
}


def scan(paths: list[Path]) -> list[str]:
    """Every finding as 'file:line: kind: excerpt'."""
    findings = []
    for path in paths:
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for kind, rx in PATTERNS.items():
                m = rx.search(line)
                if m:
                    findings.append(f"{where}:{n}: {kind}: {m.group(0)[:40]}")
            for secret in SECRETS:
                if secret in line:
                    findings.append(f"{where}:{n}: secret {secret[:6]}...")
    return findings


def test_the_scanner_finds_what_it_looks_for(tmp_path: Path) -> None:
    """A scanner that finds nothing proves nothing."""
    bad = tmp_path / "x.log"
    bad.write_text(
        '{"msg": "to +12015550123"}\n{"msg": "GET /sms?to=%2B12015550123"}\n'
        '{"msg": "ada@example.com"}\n{"msg": "Authorization: Bearer hk_abcdefgh"}\n'
        f'{{"msg": "{TEST_KEY}"}}\n{{"msg": "(201) 555-0123"}}\n'
        '{"ts": "2026-11-24T10:07:23.840+00:00", "msg": "127.0.0.1:51034 ok, 12345678 rows"}\n'
    )
    found = [f.split(": ", 1)[1] for f in scan([bad])]
    assert len(found) == 6, found
    assert sum("URL-encoded" in f for f in found) == 1, found


@pytest.mark.e2e
@pytest.mark.timeout(300)
async def test_service_logs_hold_no_personal_data_or_secrets(
    keyed_stack: Stack, infra: dict[str, str]
) -> None:
    scenario = Scenario(keyed_stack, size=5, api_key=TEST_KEY, suppress_every=0)
    await scenario.seed()
    await scenario.wait_views()
    await scenario.post_events(range(5), rate=None, batch=5)
    auth = {"Authorization": f"Bearer {TEST_KEY}"}
    async with httpx.AsyncClient(timeout=20, headers=auth) as http:
        # Hostile input that carries personal data where it does not belong.
        prefs = f"{keyed_stack.url('preferences')}/v1/contacts"
        hostile = {
            "customer_id": f"ada.lovelace@example.com-{uuid.uuid4().hex[:4]}",
            "channels": {"sms": "+1 201 555 01", "email": "not-an-email@@example.com"},
            "ranking": ["sms", "email"],
            "consents": {},
            "locale": "en-GB",
            "time_zone": "Europe/London",
        }
        r = await http.post(prefs, json=hostile)
        assert r.status_code == 422
        r = await http.post(prefs, json={**hostile, "channels": {"sms": "+442079460958x"}})
        assert r.status_code == 422
        r = await http.get(
            f"{keyed_stack.url('preferences')}/v1/contacts/+12015550199",
            headers={"Authorization": "Bearer hk_leakedkeyleakedkey"},
        )
        assert r.status_code == 401
        r = await http.get(f"{keyed_stack.url('ingest')}/v1/customers/bob@example.com/cases")
        assert r.status_code in (200, 404)

    await eventually(lambda: len(_sms(keyed_stack)) >= 5, within=120)
    logs = sorted(LOGS.rglob("*.log"))
    lines = sum(len(p.read_text(errors="replace").splitlines()) for p in logs)
    assert logs and lines > 50, "no logs to scan"
    findings = scan(logs)
    assert not findings, f"{len(findings)} findings in {len(logs)} logs:\n" + "\n".join(
        findings[:40]
    )


def _sms(stack: Stack) -> list[object]:
    r = httpx.get(f"{stack.url('sandbox')}/sandbox/api/sms", timeout=10)
    items: list[object] = r.json()["items"]
    return items
