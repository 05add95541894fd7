"""A local Prometheus (Debian's `prometheus`) scraping every service, loading the chart's rules.

`make run PROMETHEUS=1` starts it beside the stack so the alert rules the Helm chart ships are
evaluated against real series; the e2e check of the dashboards' metrics uses it too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

RULES = Path("deploy") / "helm" / "herald" / "files" / "alerts.yaml"


def prometheus_config(
    ports: Mapping[str, int], rules: Path, interval: str = "5s"
) -> dict[str, Any]:
    """Scrape config: one job per service on 127.0.0.1, labelled as the ServiceMonitor would."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": name,
                "metrics_path": "/metrics",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{port}"],
                        # The dashboards filter on namespace, which Kubernetes scrapes add.
                        "labels": {"service": name, "namespace": "local"},
                    }
                ],
            }
            for name, port in ports.items()
        ],
    }


@dataclass
class LocalPrometheus:
    """A running Prometheus process and where it answers."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll /-/ready until 200; RuntimeError with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"prometheus did not become ready:\n{tail}")

    def stop(self) -> None:
        """Stop it, forcibly after 10 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_prometheus(
    ports: Mapping[str, int], root: Path, work_dir: Path, port: int = 9090
) -> LocalPrometheus:
    """Write the config into work_dir and start Prometheus on 127.0.0.1:port."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus missing: run `make setup` (deploy/local/prometheus.sh)")
    work_dir.mkdir(parents=True, exist_ok=True)
    config = work_dir / "prometheus.yml"
    # JSON is valid YAML, so the config needs no YAML library.
    config.write_text(json.dumps(prometheus_config(ports, (root / RULES).resolve()), indent=2))
    log_path = work_dir / "prometheus.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - Debian's prometheus, our own arguments
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return LocalPrometheus(process, port, log_path)
