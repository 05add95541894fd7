"""`make bench`: run every tests/bench/bench_*.py and write figures to bench-results/.

Each module defines `async def bench(env: BenchEnv) -> list[Figure]`. Figures are printed as a
table and written as JSON with the command that produced them. Nothing here asserts a time.
Each benchmark starts after the page cache's dirty pages are on disk (`settle`): the broker
writes gigabytes in some of them, and their write-back would otherwise fall into the next one.
Before each benchmark and after the last, the `machine` rows give a fixed pure-Python loop's
time (benchlib.reference_loop): how fast the machine was then, to compare runs by; and the CPU
that other processes took then (benchlib.other_load), which the loop, on one core of two, can miss.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchlib import BenchEnv, Figure, other_load, reference_loop, settle  # noqa: E402
from herald_kit import tune_gc  # noqa: E402


def _modules(only: list[str]) -> list[Path]:
    mods = sorted(HERE.glob("bench_*.py"))
    if only:
        mods = [m for m in mods if any(o in m.stem for o in only)]
    return mods


def _machine_speed(when: str) -> Figure:
    """The reference loop's time now (see benchlib.reference_loop), as a figure."""
    median, fastest, slowest = reference_loop()
    return Figure(
        "machine",
        f"reference loop {when}",
        median,
        "ms",
        f"fixed pure-Python work on one core, median of 7 (fastest {fastest:.0f}, slowest "
        f"{slowest:.0f}); lower is a faster machine: compare runs by it",
    )


async def _other_load(when: str) -> Figure:
    """The CPU other processes took just now (see benchlib.other_load), as a figure."""
    share, busiest = await other_load()
    top = ", ".join(f"{name} {used:.1f}%" for name, used in busiest) or "none"
    return Figure(
        "machine",
        f"other processes' CPU {when}",
        share,
        "% of a core",
        f"over 2 s, besides the benchmark's broker and database; busiest: {top}. Near 0 on an "
        "otherwise idle machine: more means something else shares the cores",
    )


async def _main(only: list[str], scale: float) -> list[Figure]:
    env = BenchEnv.from_environment(scale=scale)
    figures: list[Figure] = []
    for path in _modules(only):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"== {path.stem}", flush=True)
        await settle()
        speed = _machine_speed(f"before {path.stem}")
        load = await _other_load(f"before {path.stem}")
        for fig in (speed, load):
            print(f"   {fig.row()}", flush=True)
            figures.append(fig)
        started = time.monotonic()
        try:
            got = await module.bench(env)
        except Exception as exc:  # one broken benchmark must not hide the others
            got = [Figure(path.stem, "error", 0.0, "", note=f"{type(exc).__name__}: {exc}")]
        for fig in got:
            print(f"   {fig.row()}", flush=True)
        figures.extend(got)
        env.figures.extend(got)
        print(f"   ({time.monotonic() - started:.1f} s)", flush=True)
    figures.append(_machine_speed("after the last"))
    return figures


def main() -> None:
    """Run the benchmarks named (all by default) and write bench-results/."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("only", nargs="*", help="substrings of benchmark module names")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink or grow every workload")
    args = parser.parse_args()
    # The services run on uvloop (uvicorn picks it when installed) with the kit's collector
    # settings (serve() calls tune_gc): so do the in-process ones.
    tune_gc()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        figures = runner.run(_main(args.only, args.scale))
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    command = "make bench" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    doc = {
        "when": stamp,
        "command": command,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "figures": [f.as_dict() for f in figures],
    }
    (out / f"bench-{stamp}.json").write_text(json.dumps(doc, indent=2))
    (out / "latest.json").write_text(json.dumps(doc, indent=2))
    table = "\n".join(
        ["| benchmark | figure | value | unit | note |", "|---|---|---|---|---|"]
        + [f.md() for f in figures]
    )
    (out / "latest.md").write_text(f"# make bench — {stamp}\n\nCommand: `{command}`\n\n{table}\n")
    print("\n" + table)
    print(f"\nwritten: {out / 'latest.json'}, {out / 'latest.md'}")


if __name__ == "__main__":
    main()
