"""Chaos at CI size: every request accounted for while services die, Kafka restarts and the
database goes away. `make chaos` runs the same scenario at 20,000 contacts."""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos.scenario import FaultPlan, Scenario, run_chaos, write_report

from herald_devstack import Stack
from support import TEST_KEY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
@pytest.mark.timeout(900)
async def test_no_contact_lost_or_duplicated_under_faults(
    chaos_stack: Stack, infra: dict[str, str]
) -> None:
    scenario = Scenario(chaos_stack, size=300, api_key=TEST_KEY)
    # The sandbox fails 10% of provider requests, half as 5xx and half as timeouts (the default).
    plan = FaultPlan(down_seconds=1.0, db_outage_seconds=5.0, gap_seconds=1.0)
    result, journal = await run_chaos(
        scenario,
        plan,
        kafka=infra["kafka"],
        mongo_uri=infra["mongo"],
        rate=4.0,
        settle_within=240,
    )
    print("\n" + result.table())
    write_report(result, journal, ROOT / ".cache" / "chaos" / "small-latest.txt")
    # Every fault really happened (a plan that silently skipped a step would prove nothing).
    assert sum("kill -9" in line for line in journal) == len(plan.services)
    assert any("stop Kafka" in line for line in journal)
    assert any("stop the database" in line for line in journal)
    assert result.provider_faults.get("unavailable", 0) >= 1, result.table()
    assert result.provider_faults.get("timeout", 0) >= 1, result.table()
    assert result.duplicates == 0, result.table()
    assert result.lost == 0, result.table()
    assert result.unaccounted == 0, result.table()
    assert result.against_wishes == 0, result.table()
    # The scenario's own expectations: consenting customers got their SMS, the rest did not.
    assert result.rows["sent (exactly one provider message)"] >= 1
    assert sum(result.rows.values()) == scenario.size, result.table()
