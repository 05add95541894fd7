"""`make chaos`: the chaos scenario at full size (20,000 contacts), outside pytest.

Prints the fault journal and the reconciliation table; exits 1 unless nothing was lost,
duplicated, left unaccounted or sent against a customer's wishes. The table is also written to
.cache/chaos/full-latest.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from chaos.scenario import (  # noqa: E402
    FaultPlan,
    Scenario,
    free_port_offset,
    run_chaos,
    write_report,
)

from herald_devstack import Stack, StackConfig  # noqa: E402
from herald_kit import ensure_topics  # noqa: E402

ROOT = HERE.parents[1]
API_KEY = "chaos-key-all-scopes"


async def _main(size: int, rate: float, db_outage: float) -> int:
    kafka = os.environ.get("HERALD_TEST_KAFKA", "127.0.0.1:9092")
    mongo = os.environ.get("HERALD_TEST_MONGO", "mongodb://127.0.0.1:27017/")
    ns = f"c{uuid.uuid4().hex[:8]}."
    await ensure_topics(kafka, namespace=ns, partitions=6)
    stack = Stack(
        StackConfig(
            kafka_bootstrap=kafka,
            mongo_uri=mongo,
            namespace=ns,
            db_suffix="_" + ns.strip("."),
            port_offset=free_port_offset(),
            api_key=API_KEY,
            log_dir=ROOT / ".cache" / "logs" / "chaos-full",
        )
    )
    try:
        await asyncio.to_thread(stack.start, 180)
        scenario = Scenario(stack, size=size, api_key=API_KEY)
        plan = FaultPlan(down_seconds=2.0, db_outage_seconds=db_outage, gap_seconds=5.0)
        result, journal = await run_chaos(
            scenario, plan, kafka=kafka, mongo_uri=mongo, rate=rate, settle_within=1800
        )
    finally:
        await asyncio.to_thread(stack.stop)
    print("\n" + result.table(), flush=True)
    write_report(result, journal, ROOT / ".cache" / "chaos" / "full-latest.txt")
    return 0 if result.clean and sum(result.rows.values()) == size else 1


def main() -> None:
    """Run the full chaos scenario."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=20_000, help="contacts in the scenario")
    parser.add_argument("--rate", type=float, default=100.0, help="events posted per second")
    parser.add_argument("--db-outage", type=float, default=30.0, help="seconds without database")
    args = parser.parse_args()
    sys.exit(asyncio.run(_main(args.size, args.rate, args.db_outage)))


if __name__ == "__main__":
    main()
