"""`make reset` (deploy/local/infra.sh reset) stops the local database and broker and forgets
what `make run` stored, so the README's walk-through starts over on an empty system.

It runs its own FerretDB on a free port and in a temporary run folder, never the suite's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from pymongo import MongoClient

from support import free_port

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "deploy" / "local" / "infra.sh"
FERRETDB = ROOT / "deploy" / "local" / "ferretdb.sh"


def _run(script: Path, command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own script
        ["bash", str(script), command],  # noqa: S607
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_reset_stops_the_database_and_forgets_what_was_stored(tmp_path: Path) -> None:
    port = free_port()
    # None of the caller's HERALD_* settings (a data folder elsewhere, the suite's ports).
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env |= {
        "HERALD_RUN": str(tmp_path / "run"),
        "HERALD_LOGS": str(tmp_path / "logs"),
        "HERALD_MONGO_PORT": str(port),
    }
    kafka_data = tmp_path / "run" / "kafka-data"
    kafka_data.mkdir(parents=True)
    (kafka_data / "meta.properties").write_text("cluster.id=old\n")
    uri = f"mongodb://127.0.0.1:{port}/"
    started = _run(FERRETDB, "start", env)
    assert started.returncode == 0, started.stderr
    try:
        with MongoClient(uri, serverSelectionTimeoutMS=5_000) as client:
            client["herald_ingest"]["cases"].insert_one({"_id": "case-7", "status": "booked"})
        pid = int((tmp_path / "run" / "ferretdb.pid").read_text())

        reset = _run(INFRA, "reset", env)

        assert reset.returncode == 0, reset.stderr
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), "FerretDB still running"
        assert not (tmp_path / "run" / "ferretdb-data").exists()
        assert not kafka_data.exists()
        assert "ferretdb data removed" in reset.stderr
        assert "kafka data removed" in reset.stderr

        again = _run(FERRETDB, "start", env)
        assert again.returncode == 0, again.stderr
        with MongoClient(uri, serverSelectionTimeoutMS=5_000) as client:
            assert client["herald_ingest"]["cases"].find_one({"_id": "case-7"}) is None
    finally:
        _run(FERRETDB, "stop", env)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
