"""The benchmark's reading of its machine: which broker and database are its own, and what
else is taking the cores while it measures."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench import benchlib

# A fixed loop under a name of its own (/proc/PID/comm), to be told from the test run's broker.
NAME = "herald-busy"
BUSY = [sys.executable, "-c", f"open('/proc/self/comm', 'w').write('{NAME}')\nwhile True: pass"]


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    """A process that keeps one core busy until the test ends."""
    proc = subprocess.Popen(BUSY)  # noqa: S603 - this interpreter, a fixed loop
    yield proc
    proc.kill()
    proc.wait()


async def test_a_process_busy_beside_the_benchmark_is_reported(
    busy: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERALD_RUN", str(tmp_path))

    share, busiest = await benchlib.other_load(seconds=1.0)

    assert share >= 50
    assert dict(busiest).get(NAME, 0) >= 50


async def test_the_benchmarks_own_broker_and_database_are_not_counted(
    busy: subprocess.Popen[bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deploy/local writes the pid files; a second Kafka elsewhere has no file here.
    (tmp_path / "kafka.pid").write_text(f"{busy.pid}\n")
    monkeypatch.setenv("HERALD_RUN", str(tmp_path))

    assert benchlib.infrastructure_pids() == {"kafka": busy.pid}
    _, busiest = await benchlib.other_load(seconds=1.0)

    assert NAME not in [name for name, _ in busiest]
