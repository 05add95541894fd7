"""`make run` (herald-run and its Stack) against what an earlier run left behind: a service
still holding its port is refused, not taken for the new one; closing the terminal stops every
service; a run killed outright leaves pid files that `infra.sh stop` stops its services by.

Every stack here is the sandbox alone (it needs neither Kafka nor the database) on free ports,
never the default ones."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from herald_devstack import BY_NAME, Stack, StackConfig
from herald_devstack._stack import SANDBOX_SMTP_PORT
from support import free_port

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "deploy" / "local" / "infra.sh"
SANDBOX = BY_NAME["sandbox"]

# herald-run's own main(), with its stack cut down to the sandbox on the test's ports.
RUNNER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    import herald_devstack._runner as runner
    from herald_devstack import BY_NAME, Stack

    class SandboxOnly(Stack):
        def __init__(self, config, services=None):
            config.port_offset = int(os.environ["TEST_PORT_OFFSET"])
            super().__init__(config, [BY_NAME["sandbox"]])

    async def no_topics(_bootstrap):
        return None

    runner.Stack = SandboxOnly
    runner.ensure_topics = no_topics
    sys.argv = ["herald-run", "--no-infra", "--root", sys.argv[1]]
    runner.main()
    """
)


@pytest.fixture
def offset() -> int:
    """A port offset at which the sandbox's HTTP and SMTP ports are both free."""
    for _ in range(50):
        offset = free_port() - SANDBOX.port
        if not _listening(SANDBOX_SMTP_PORT + offset) and _bindable(SANDBOX_SMTP_PORT + offset):
            return offset
    raise RuntimeError("no free pair of ports")


@pytest.fixture
def run_env(tmp_path: Path, offset: int) -> dict[str, str]:
    """herald-run's environment: its own run folder (pid files), none of the caller's ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    return env | {
        "HERALD_RUN": str(tmp_path / "run"),
        "HERALD_LOGS": str(tmp_path / "logs"),
        # infra.sh stop must find no Kafka or FerretDB of anybody's here.
        "HERALD_KAFKA_PORT": str(free_port()),
        "HERALD_MONGO_PORT": str(free_port()),
        "TEST_PORT_OFFSET": str(offset),
    }


def _stack(offset: int, log_dir: Path) -> Stack:
    return Stack(StackConfig(port_offset=offset, log_dir=log_dir), [SANDBOX])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _sandboxes_on(port: int) -> list[int]:
    """The sandbox processes serving this port (found by their environment, pid file or not)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"herald_sandbox" in cmdline and f"HERALD_SANDBOX_PORT={port}".encode() in environ:
            found.append(int(proc.name))
    return found


@pytest.fixture
def runner(tmp_path: Path, run_env: dict[str, str], offset: int) -> Iterator[subprocess.Popen[str]]:
    """herald-run (sandbox only), started; whatever it leaves running is stopped after."""
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    proc = subprocess.Popen(  # noqa: S603 - our interpreter and script
        [sys.executable, str(script), str(tmp_path)],
        env=run_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)  # reaps it and closes its pipes
        for pid in _sandboxes_on(SANDBOX.port + offset):
            os.kill(pid, signal.SIGKILL)


def _wait_running(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if "Press Ctrl-C" in line:
            return seen
    pytest.fail(f"herald-run never came up:\n{seen}\n{proc.stderr.read() if proc.stderr else ''}")


def test_a_port_already_taken_is_refused_before_any_service_starts(
    tmp_path: Path, offset: int
) -> None:
    port = SANDBOX.port + offset
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        stack = _stack(offset, tmp_path)
        with pytest.raises(RuntimeError, match=f"sandbox port {port} already taken"):
            stack.start(timeout=30)
    assert stack.running == {}


def test_a_service_left_running_by_an_earlier_stack_is_not_taken_for_the_new_one(
    tmp_path: Path, offset: int
) -> None:
    earlier = _stack(offset, tmp_path / "earlier")
    earlier.start(timeout=30)
    try:
        later = _stack(offset, tmp_path / "later")
        with pytest.raises(RuntimeError, match=f"sandbox port {SANDBOX.port + offset}"):
            later.start(timeout=30)
        assert later.running == {}
        assert earlier.running["sandbox"].process.poll() is None
    finally:
        earlier.stop()


def test_herald_run_refuses_a_taken_port_and_names_it(
    runner: subprocess.Popen[str], offset: int
) -> None:
    port = SANDBOX.port + offset
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        out, err = runner.communicate(timeout=60)
    assert runner.returncode != 0
    assert f"sandbox port {port} already taken" in err
    assert "Herald is running" not in out


def test_closing_the_terminal_stops_every_service(
    runner: subprocess.Popen[str], tmp_path: Path, offset: int
) -> None:
    _wait_running(runner)
    pid = int((tmp_path / "run" / "services" / "sandbox.pid").read_text())
    assert _listening(SANDBOX.port + offset)

    runner.send_signal(signal.SIGHUP)
    runner.wait(30)

    assert not _alive(pid), "the sandbox outlived herald-run"
    assert not _listening(SANDBOX.port + offset)
    assert not (tmp_path / "run" / "services" / "sandbox.pid").exists()


def test_infra_stop_stops_the_services_of_a_run_killed_outright(
    runner: subprocess.Popen[str], tmp_path: Path, run_env: dict[str, str], offset: int
) -> None:
    _wait_running(runner)
    pid = int((tmp_path / "run" / "services" / "sandbox.pid").read_text())
    runner.kill()  # kill -9: no clean-up at all
    runner.wait(10)
    time.sleep(0.5)
    assert _alive(pid), "the sandbox should have outlived a killed herald-run"

    stopped = subprocess.run(  # noqa: S603 - our own script
        ["bash", str(INFRA), "stop"],  # noqa: S607
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert stopped.returncode == 0, stopped.stderr
    assert "sandbox stopped" in stopped.stderr
    assert not _alive(pid)
    assert not _listening(SANDBOX.port + offset)
    # The next run starts.
    again = _stack(offset, tmp_path / "again")
    again.start(timeout=30)
    again.stop()
