"""Start every service as its own process against the local Kafka and database."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from herald_devstack._services import SERVICES, ServiceSpec
from herald_kit import hash_key

ALL_SCOPES = (
    "preferences:read",
    "preferences:write",
    "preferences:admin",
    "events:write",
    "cases:read",
    "campaigns:read",
    "campaigns:write",
    "decisions:read",
)
SANDBOX_SID = "AC00000000000000000000000000000000"
SANDBOX_SMTP_PORT = 2525
SANDBOX_TOKEN = "sandbox-auth-token"  # noqa: S105 - the sandbox's own fake credential


@dataclass
class StackConfig:
    """Where the infrastructure is and how to separate this stack from others."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_uri: str = "mongodb://127.0.0.1:27017/"
    namespace: str = ""
    db_suffix: str = ""
    port_offset: int = 0
    api_key: str = "herald-dev-key"
    link_secret: str = "herald-dev-link-secret"  # noqa: S105 - local development only
    log_dir: Path = Path(".cache/logs")
    extra_env: dict[str, str] = field(default_factory=dict)
    # Where each service's pid file goes (`make run`: so that deploy/local/services.sh can stop
    # what a run killed without its clean-up left behind); None writes none.
    pid_dir: Path | None = None


@dataclass
class Running:
    """A started service process."""

    spec: ServiceSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"


class Stack:
    """The whole system as processes; `make run` and the e2e tests both use it."""

    def __init__(self, config: StackConfig, services: Iterable[ServiceSpec] = SERVICES) -> None:
        self.config = config
        self.specs = list(services)
        self.running: dict[str, Running] = {}

    def port(self, name: str) -> int:
        """A service's port in this stack."""
        spec = next(s for s in self.specs if s.name == name)
        return spec.port + self.config.port_offset

    def url(self, name: str) -> str:
        """A service's base URL in this stack."""
        return f"http://127.0.0.1:{self.port(name)}"

    def smtp_port(self) -> int:
        """The sandbox's SMTP sink port in this stack."""
        return SANDBOX_SMTP_PORT + self.config.port_offset

    def ports_of(self, name: str) -> list[tuple[str, int]]:
        """What a service listens on in this stack: (what, port) pairs."""
        ports = [(name, self.port(name))]
        if name == "sandbox":
            ports.append(("sandbox SMTP sink", self.smtp_port()))
        return ports

    def pid_file(self, name: str) -> Path | None:
        """A service's pid file, when this stack keeps them."""
        pid_dir = self.config.pid_dir
        return pid_dir / f"{name}.pid" if pid_dir is not None else None

    def env_for(self, spec: ServiceSpec) -> dict[str, str]:
        """Environment of one service process."""
        cfg = self.config
        p = spec.env_prefix
        keys = [{"name": "dev", "hash": hash_key(cfg.api_key), "scopes": list(ALL_SCOPES)}]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(
            {
                f"{p}HOST": "127.0.0.1",
                f"{p}PORT": str(self.port(spec.name)),
                f"{p}KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
                f"{p}TOPIC_NAMESPACE": cfg.namespace,
                f"{p}MONGO_URI": cfg.mongo_uri,
                f"{p}API_KEYS": json.dumps(keys),
                f"{p}LINK_SECRET": cfg.link_secret,
                f"{p}LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if spec.uses_db:
            env[f"{p}MONGO_DB"] = "herald_" + spec.name.replace("-", "_") + cfg.db_suffix
        sandbox = self.url("sandbox")
        if spec.name in ("sms-sender", "voice-sender"):
            env[f"{p}TWILIO_ACCOUNT_SID"] = SANDBOX_SID
            env[f"{p}TWILIO_AUTH_TOKEN"] = SANDBOX_TOKEN
            env[f"{p}TWILIO_BASE_URL"] = sandbox
        if spec.name == "sandbox":
            env[f"{p}TWILIO_ACCOUNT_SID"] = SANDBOX_SID
            env[f"{p}TWILIO_AUTH_TOKEN"] = SANDBOX_TOKEN
            env[f"{p}SMTP_PORT"] = str(self.smtp_port())
            if any(s.name == "sms-sender" for s in self.specs):  # a stack may run without it
                env[f"{p}TWILIO_SMS_WEBHOOK_URL"] = (
                    f"{self.url('sms-sender')}/webhooks/twilio/inbound"
                )
        if spec.name == "dispatcher":
            env[f"{p}STATUS_URL"] = f"{self.url('ingest')}/s/{{token}}"
            env[f"{p}PREFERENCES_URL"] = f"{self.url('preferences')}/p/{{token}}"
        if spec.name == "email-sender":
            # The sandbox's SMTP sink speaks plain SMTP on localhost.
            env[f"{p}SMTP_HOST"] = "127.0.0.1"
            env[f"{p}SMTP_PORT"] = str(self.smtp_port())
            env[f"{p}SMTP_SECURITY"] = "none"
            # Its one-click URL is this stack's http://127.0.0.1 address (RFC 8058 wants https).
            env[f"{p}UNSUBSCRIBE_ALLOW_HTTP"] = "true"
        for key, value in cfg.extra_env.items():
            if key.startswith(p) or not key.startswith("HERALD_"):
                env[key] = value
        return env

    def start(self, timeout: float = 60.0) -> None:
        """Start every service and wait until each is ready.

        RuntimeError, before starting any, when a port of one is taken: a service left running
        by an earlier stack would answer in place of the new one, which dies at its bind."""
        self.refuse_taken_ports()
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            self.start_one(spec.name)
        self.wait_ready(timeout)

    def start_one(self, name: str) -> Running:
        """Start (or restart) one service process; RuntimeError when its port is taken."""
        spec = next(s for s in self.specs if s.name == name)
        self.refuse_taken_ports([name])
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.config.log_dir / f"{spec.name}{self.config.db_suffix}.log"
        log = log_path.open("ab")
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", spec.module],
            env=self.env_for(spec),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        run = Running(spec, self.port(spec.name), proc, log_path)
        self.running[name] = run
        pid_file = self.pid_file(name)
        if pid_file is not None:
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(f"{proc.pid}\n")
        return run

    def refuse_taken_ports(self, names: Iterable[str] | None = None) -> None:
        """RuntimeError naming each service (every one by default) whose port another process
        holds; one of this stack's own running processes holds its ports by right."""
        names = [spec.name for spec in self.specs] if names is None else names
        taken = [
            f"{what} port {port}"
            for name in names
            if not self._own_and_alive(name)
            for what, port in self.ports_of(name)
            if _port_taken(port)
        ]
        if taken:
            raise RuntimeError(
                f"cannot start: {', '.join(taken)} already taken by another process (a service"
                " an earlier `make run` left running? `make infra-down` stops those)"
            )

    def _own_and_alive(self, name: str) -> bool:
        run = self.running.get(name)
        return run is not None and run.process.poll() is None

    def wait_ready(self, timeout: float = 60.0, names: Iterable[str] | None = None) -> None:
        """Poll /readyz of each service until 200; RuntimeError naming the laggards, or a
        service whose process exited (ready or not: an answer on its port proves nothing
        when its own process is gone)."""
        names = list(names or self.running)
        pending = set(names)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while pending and time.monotonic() < deadline:
                for name in sorted(pending):
                    self._raise_if_exited(name)
                    try:
                        if client.get(f"{self.running[name].url}/readyz").status_code == 200:
                            pending.discard(name)
                    except httpx.HTTPError:
                        pass
                if pending:
                    time.sleep(0.3)
        if pending:
            raise RuntimeError(f"not ready after {timeout}s: {', '.join(sorted(pending))}")
        for name in names:
            self._raise_if_exited(name)

    def _raise_if_exited(self, name: str) -> None:
        run = self.running[name]
        if run.process.poll() is not None:
            tail = run.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(
                f"{name} (port {run.port}) exited ({run.process.returncode}):\n{tail}"
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send a signal to one service (kill -9 by default) and reap it."""
        run = self.running[name]
        if run.process.poll() is None:
            os.killpg(run.process.pid, sig)
            run.process.wait(timeout=30)
        self._forget_pid(name)

    def stop(self) -> None:
        """Stop every service gracefully, then forcibly."""
        for run in self.running.values():
            if run.process.poll() is None:
                os.killpg(run.process.pid, signal.SIGTERM)
        for run in self.running.values():
            try:
                run.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait(timeout=5)
        for name in self.running:
            self._forget_pid(name)

    def _forget_pid(self, name: str) -> None:
        pid_file = self.pid_file(name)
        if pid_file is not None:
            pid_file.unlink(missing_ok=True)


def _port_taken(port: int) -> bool:
    """Whether another socket holds the port on 127.0.0.1 (one closing in TIME_WAIT does not:
    the services' servers bind with SO_REUSEADDR too)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False
