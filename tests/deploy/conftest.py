"""Fixtures for the deployment checks: the Helm CLI and rendering of the chart."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy.chartlib import (
    CHART,
    KUBE_VERSION,
    ROOT,
    Render,
    alert_rules,
    dashboard_exprs,
    metric_names,
)


@pytest.fixture(scope="session")
def helm() -> str:
    """The Helm CLI that `make setup` builds; fails, not skips, when missing."""
    path = Path(os.environ.get("HERALD_CACHE", ROOT / ".cache")) / "bin" / "helm"
    assert path.is_file(), f"{path} missing: run `make setup` (deploy/tools/helm.sh install)"
    return str(path)


def _template(
    helm: str, *values: Path, sets: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    args = [helm, "template", "herald", str(CHART), "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", str(v)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603


@pytest.fixture(scope="session")
def template(helm: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `helm template` on the chart with value files and --set pairs; the raw result."""

    def run(*values: Path, sets: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return _template(helm, *values, sets=sets)

    return run


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """Render the chart and parse it into a list of manifests (fails on a render error)."""

    def run(*values: Path, sets: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        done = _template(helm, *values, sets=sets)
        assert done.returncode == 0, done.stderr
        return [d for d in yaml.safe_load_all(done.stdout) if d]

    return run


@pytest.fixture(scope="session")
def names_in() -> Callable[[str], set[str]]:
    """The metric-name extractor for PromQL."""
    return metric_names


@pytest.fixture(scope="session")
def rules() -> list[dict[str, Any]]:
    """The shipped alerting and recording rules."""
    return alert_rules()


@pytest.fixture(scope="session")
def dashboard_queries() -> dict[str, list[str]]:
    """PromQL of every dashboard, by file name."""
    return dashboard_exprs()
