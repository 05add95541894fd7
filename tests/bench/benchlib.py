"""What benchmarks share: where the infrastructure is, unique names, figures, percentiles."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from herald_kit import ensure_topics


@dataclass(frozen=True)
class Figure:
    """One measured number."""

    bench: str
    name: str
    value: float
    unit: str
    note: str = ""

    def shown(self) -> str:
        """The value as printed: ratios below 10 with three decimals (0.33 vs 0.3 matters)."""
        if self.unit == "ratio" and abs(self.value) < 10:
            return f"{self.value:.3f}"
        if self.unit == "cmd":  # database commands per SMS: fractions of one matter
            return f"{self.value:.2f}"
        return f"{self.value:,.1f}"

    def row(self) -> str:
        """A console line."""
        return f"{self.name:<48} {self.shown():>12} {self.unit:<10} {self.note}"

    def md(self) -> str:
        """A markdown table row."""
        return f"| {self.bench} | {self.name} | {self.shown()} | {self.unit} | {self.note} |"

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        return asdict(self)


@dataclass
class BenchEnv:
    """The broker and database `make bench` started, and a scale factor for workloads."""

    kafka: str
    mongo: str
    scale: float = 1.0
    # Figures of the benchmarks already run, so later ones can state ratios to earlier ones.
    figures: list[Figure] = field(default_factory=list)

    @classmethod
    def from_environment(cls, *, scale: float) -> BenchEnv:
        """From HERALD_TEST_KAFKA / HERALD_TEST_MONGO (set by scripts/bench.sh)."""
        return cls(
            kafka=os.environ.get("HERALD_TEST_KAFKA", "127.0.0.1:9092"),
            mongo=os.environ.get("HERALD_TEST_MONGO", "mongodb://127.0.0.1:27017/"),
            scale=scale,
        )

    def n(self, base: int) -> int:
        """A workload size under the scale factor."""
        return max(1, int(base * self.scale))

    async def namespace(self, partitions: int = 6) -> str:
        """A fresh topic namespace with every topic created."""
        ns = f"b{uuid.uuid4().hex[:8]}."
        await ensure_topics(self.kafka, namespace=ns, partitions=partitions)
        return ns


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100), nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


async def settle() -> None:
    """Write what earlier steps left in the page cache to disk before a measurement, so the
    kernel's write-back of one step's gigabyte does not land in the next step's timing."""
    await asyncio.to_thread(os.sync)


def _reference_work() -> int:
    """A fixed pure-Python workload (dict, string and integer work, as service code does)."""
    counts: dict[str, int] = {}
    total = 0
    for i in range(200_000):
        key = f"k{i % 1000}"
        counts[key] = counts.get(key, 0) + i
        total += len(key)
    return total + len(counts)


def reference_loop(rounds: int = 7) -> tuple[float, float, float]:
    """How fast one core of this machine runs a fixed pure-Python workload right now, in ms:
    (median, fastest, slowest) of `rounds` runs. A shared 2-core VM ran the same code 1.6 times
    slower from one minute to the next; this tells a slow machine from a slower Herald when
    runs are compared."""
    took = []
    for _ in range(rounds):
        started = time.perf_counter()
        _reference_work()
        took.append(1000 * (time.perf_counter() - started))
    return statistics.median(took), min(took), max(took)


# HotSpot's JIT compiler threads, as the kernel's 15-character comm cuts their names.
JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU in a process's or a thread's stat file (0 when it is gone)."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (0 when it is gone)."""
    return _stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def _named_cpu(directory: Path) -> dict[int, tuple[str, float]]:
    """Each process (under /proc) or thread (under /proc/PID/task) there: its name (comm) and
    the CPU seconds it has used so far; those gone meanwhile are left out."""
    seen: dict[int, tuple[str, float]] = {}
    try:
        entries = list(directory.iterdir())
    except OSError:
        return seen
    for entry in entries:
        if entry.name.isdigit():
            try:
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            seen[int(entry.name)] = (name, _stat_cpu_seconds(entry / "stat"))
    return seen


def threads_cpu_seconds(pid: int, names: tuple[str, ...]) -> float:
    """CPU that a process's threads whose names start with one of `names` have used so far,
    those that have ended aside (a JVM's compiler threads, say: part of its CPU is warming up)."""
    threads = _named_cpu(Path(f"/proc/{pid}/task")).values()
    return sum(cpu for name, cpu in threads if name.startswith(names))


def infrastructure_pids() -> dict[str, int]:
    """The broker and the database `scripts/bench.sh` started, from the pid files that
    deploy/local writes under `HERALD_RUN` (another Kafka or FerretDB on the machine, a test
    run's say, has a command line just like theirs)."""
    root = Path(__file__).resolve().parents[2]
    run = Path(os.environ.get("HERALD_RUN") or root / ".cache" / "run")
    found: dict[str, int] = {}
    for name in ("kafka", "ferretdb"):
        try:
            found[name] = int((run / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
    return found


async def other_load(seconds: float = 2.0) -> tuple[float, list[tuple[str, float]]]:
    """CPU used over `seconds` by processes other than this one and the benchmark's broker and
    database, in % of one core, and the busiest of them: a test run or a build left beside a
    benchmark takes cores from it, and one core busy of two need not slow the reference loop."""
    ours = {os.getpid(), *infrastructure_pids().values()}
    before = _named_cpu(Path("/proc"))
    await asyncio.sleep(seconds)
    after = _named_cpu(Path("/proc"))
    used = [
        (name, 100 * (cpu - before[pid][1]) / seconds)
        for pid, (name, cpu) in after.items()
        if pid in before and pid not in ours
    ]
    used = sorted((u for u in used if u[1] > 0), key=lambda u: -u[1])
    return sum(share for _, share in used), used[:3]


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (proc(5), /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    total = sum(fields[:8])  # guest time is already inside user and nice
    return total - idle, total


@dataclass
class MachineMeter:
    """How busy the whole machine was between `start()` and `stop()`: near 100 % means the
    workload was bound by this machine's cores, not by waiting."""

    _before: tuple[int, int] = (0, 0)
    busy_share: float = 0.0

    def start(self) -> None:
        """Take the first reading."""
        self._before = _machine_jiffies()

    def stop(self) -> float:
        """The share (0..1) of all cores' time spent busy since `start()`."""
        busy, total = _machine_jiffies()
        self.busy_share = (busy - self._before[0]) / max(total - self._before[1], 1)
        return self.busy_share


@dataclass
class CpuMeter:
    """CPU used by named processes between `start()` and `stop()`: where a workload's time goes,
    a figure that holds across machines of different speed better than a rate does."""

    pids: dict[str, int]
    # Named parts of a process's CPU, by its threads' names: (process, thread name prefixes).
    # Already counted in the process's own figure; `parts_used` gives them apart.
    parts: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    _before: dict[str, float] = field(default_factory=dict)
    _parts_before: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    parts_used: dict[str, float] = field(default_factory=dict)

    def _read(self) -> tuple[dict[str, float], dict[str, float]]:
        whole = {name: _cpu_seconds(pid) for name, pid in self.pids.items()}
        parts = {
            part: threads_cpu_seconds(self.pids[owner], names)
            for part, (owner, names) in self.parts.items()
            if owner in self.pids
        }
        return whole, parts

    def start(self) -> None:
        """Take the first reading."""
        self._before, self._parts_before = self._read()

    def stop(self) -> dict[str, float]:
        """CPU seconds each process used since `start()`."""
        whole, parts = self._read()
        self.used = {name: cpu - self._before.get(name, 0.0) for name, cpu in whole.items()}
        self.parts_used = {
            # A thread that ended in between takes its CPU with it: never below 0.
            part: max(cpu - self._parts_before.get(part, 0.0), 0.0)
            for part, cpu in parts.items()
        }
        return self.used
