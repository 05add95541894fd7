"""`make run`: the infrastructure, every service and the sandbox, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from herald_devstack._prometheus import LocalPrometheus, start_prometheus
from herald_devstack._stack import Stack, StackConfig
from herald_kit import ensure_topics


def main() -> None:
    """Start everything, print where it listens, stop it all on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--no-infra", action="store_true", help="use infrastructure already up")
    parser.add_argument(
        "--prometheus",
        action="store_true",
        help="also run a local Prometheus scraping every service with the chart's alert rules",
    )
    args = parser.parse_args()
    root: Path = args.root
    infra = root / "deploy" / "local" / "infra.sh"
    env = os.environ.get
    kafka = f"{env('HERALD_KAFKA_HOST', '127.0.0.1')}:{env('HERALD_KAFKA_PORT', '9092')}"
    mongo_host = env("HERALD_MONGO_HOST", "127.0.0.1")
    mongo = f"mongodb://{mongo_host}:{env('HERALD_MONGO_PORT', '27017')}/"
    # The services' pid files sit beside Kafka's and FerretDB's (deploy/local/lib.sh's
    # HERALD_RUN), where `infra.sh stop` finds them if this process dies without its clean-up.
    run_dir = Path(env("HERALD_RUN") or Path(env("HERALD_CACHE") or root / ".cache") / "run")
    stack = Stack(
        StackConfig(
            kafka_bootstrap=kafka,
            mongo_uri=mongo,
            log_dir=root / ".cache" / "logs",
            pid_dir=run_dir / "services",
        )
    )
    try:  # before the infrastructure starts: a taken port is for the user to clear first
        stack.refuse_taken_ports()
    except RuntimeError as exc:
        sys.exit(str(exc))
    if not args.no_infra:
        subprocess.run(["bash", str(infra), "start"], check=True)  # noqa: S603, S607
    asyncio.run(ensure_topics(kafka))
    stopping = False
    hung_up = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping, hung_up
        stopping = True
        hung_up = hung_up or signum == signal.SIGHUP

    # Closing the terminal (SIGHUP) stops everything as Ctrl-C does: the services run in
    # sessions of their own, so no hangup reaches them, and they would outlive this process.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    prometheus: LocalPrometheus | None = None
    try:
        stack.start(timeout=90)
        if args.prometheus:
            prom_port = int(env("HERALD_PROMETHEUS_PORT", "9090"))
            ports = {name: run.port for name, run in stack.running.items()}
            prometheus = start_prometheus(ports, root, root / ".cache" / "prometheus", prom_port)
            prometheus.wait_ready()
            url = prometheus.url
            sys.stdout.write(f"  prometheus    {url}   (alerts: {url}/alerts)\n")
        lines = [
            f"  {name:<13} {run.url}   (log: {run.log_path})" for name, run in stack.running.items()
        ]
        sys.stdout.write(
            "Herald is running:\n" + "\n".join(lines) + "\n"
            f"  kafka         {kafka}\n  database      {mongo}\n"
            f"  API key       {stack.config.api_key}   (dev only: every scope)\n"
            f"  sandbox page  {stack.url('sandbox')}/sandbox\n"
            "Press Ctrl-C to stop everything.\n"
        )
        sys.stdout.flush()
        while not stopping:
            signal.pause()
    except RuntimeError as exc:  # a service that cannot start: say which and why, no traceback
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(1) from None
    finally:
        # After a hangup the terminal is gone and writing to it fails: say nothing, stop all.
        quiet = subprocess.DEVNULL if hung_up else None
        if not hung_up:
            sys.stdout.write("stopping services...\n")
        if prometheus is not None:
            prometheus.stop()
        stack.stop()
        if not args.no_infra:
            subprocess.run(  # noqa: S603
                ["bash", str(infra), "stop"],  # noqa: S607
                check=False,
                stdout=quiet,
                stderr=quiet,
            )
