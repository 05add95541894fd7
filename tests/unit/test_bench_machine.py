"""The benchmark's reading of its machine: which broker and database are its own, what else is
taking the cores while it measures, and which of a process's threads took its CPU."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench import benchlib

# A fixed loop under a name of its own (/proc/PID/comm), to be told from the test run's broker.
NAME = "herald-busy"
BUSY = [sys.executable, "-c", f"open('/proc/self/comm', 'w').write('{NAME}')\nwhile True: pass"]


# A process with two threads: one busy under a compiler thread's name, one asleep under another.
JIT_LIKE = [
    sys.executable,
    "-c",
    """
import threading, time
def named(name, work):
    def run():
        open(f"/proc/self/task/{threading.get_native_id()}/comm", "w").write(name)
        work()
    threading.Thread(target=run, daemon=True).start()
def spin():
    while True: pass
named("C2 CompilerThread0", spin)
named("data-plane-kafka", lambda: time.sleep(3600))
time.sleep(3600)
""",
]


def _running(command: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(command)  # noqa: S603 - this interpreter, fixed code
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    """A process that keeps one core busy until the test ends."""
    yield from _running(BUSY)


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


def _thread_names(pid: int) -> set[str]:
    return {(t / "comm").read_text().strip() for t in Path(f"/proc/{pid}/task").iterdir()}


@pytest.fixture
def compiling() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose CPU all goes into a thread named like HotSpot's C2 compiler."""
    yield from _running(JIT_LIKE)


async def test_a_brokers_jit_compiling_is_told_apart_from_its_other_threads(
    compiling: subprocess.Popen[bytes],
) -> None:
    meter = benchlib.CpuMeter(
        {"kafka": compiling.pid},
        parts={
            "JIT compiling": ("kafka", benchlib.JIT_THREADS),
            "network": ("kafka", ("data-plane",)),
        },
    )
    for _ in range(100):  # until both threads have named themselves (comm keeps 15 characters)
        if {"C2 CompilerThre", "data-plane-kafk"} <= _thread_names(compiling.pid):
            break
        await asyncio.sleep(0.05)

    meter.start()
    await asyncio.sleep(1.0)
    meter.stop()

    # Enough CPU to tell the parts apart even on a machine busy with other work.
    assert meter.used["kafka"] >= 0.2
    assert meter.parts_used["JIT compiling"] >= 0.8 * meter.used["kafka"]
    assert meter.parts_used["network"] <= 0.05
