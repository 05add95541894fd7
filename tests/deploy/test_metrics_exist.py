"""Every metric a dashboard or an alert names is exported by a running service, and a real
Prometheus scraping the stack loads the chart's rules and sees the series."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from deploy.chartlib import ROOT, alert_rules, dashboard_exprs, metric_names

from herald_devstack import Stack, StackConfig
from herald_devstack._prometheus import start_prometheus
from support import TEST_KEY, eventually, free_port

# Sample names a metric family of each type exposes (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "untyped": ("",),
}


def exported_names(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, from its TYPE lines and its samples."""
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        # A counter with no samples yet is typed under its full name (…_total).
        base = family.removesuffix("_total") if kind == "counter" else family
        names.update(base + s for s in SUFFIXES.get(kind, ("",)))
    names.update(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", text, flags=re.M))
    return names


def test_exported_names_expand_families_by_type() -> None:
    text = (
        "# TYPE herald_dlq_messages counter\n"
        "# TYPE herald_consumer_handle_seconds histogram\n"
        'herald_consumer_handle_seconds_bucket{le="1.0"} 0.0\n'
        "# TYPE herald_service_ready gauge\n"
    )
    names = exported_names(text)
    assert {"herald_dlq_messages_total", "herald_consumer_handle_seconds_bucket"} <= names
    assert "herald_service_ready" in names
    assert "herald_dlq_messages" not in names
    assert "herald_produced_messages_total" in exported_names(
        "# TYPE herald_produced_messages_total counter\n"
    )


@pytest.fixture
def stack(infra: dict[str, str], namespace: str) -> Iterator[Stack]:
    """Every service as `make run` starts it, isolated by namespace and ports."""
    s = Stack(
        StackConfig(
            kafka_bootstrap=infra["kafka"],
            mongo_uri=infra["mongo"],
            namespace=namespace,
            db_suffix="_" + namespace.strip("."),
            port_offset=random.randrange(17_000, 24_000, 10),  # below the ephemeral range
            api_key=TEST_KEY,
            log_dir=ROOT / ".cache" / "logs" / "deploy",
        )
    )
    try:
        s.start(timeout=90)
        yield s
    finally:
        s.stop()


@pytest.mark.e2e
async def test_dashboards_and_alerts_name_only_exported_metrics(
    stack: Stack, tmp_path: Path
) -> None:
    exported: set[str] = set()
    async with httpx.AsyncClient(timeout=10) as http:
        for name in stack.running:
            r = await http.get(f"{stack.url(name)}/metrics")
            assert r.status_code == 200, name
            exported |= exported_names(r.text)

    rules = alert_rules()
    recorded = {r["record"] for r in rules if "record" in r}
    referenced: dict[str, set[str]] = {}
    for rule in rules:
        referenced[rule.get("alert") or rule["record"]] = metric_names(rule["expr"])
    for dashboard, exprs in dashboard_exprs().items():
        referenced[dashboard] = set().union(*(metric_names(e) for e in exprs))
    used = set().union(*referenced.values())
    assert {"herald_consumer_lag_messages", "herald_dlq_messages_total"} <= used
    # Prometheus writes `up` for every target it scrapes: no service exports it.
    known = exported | recorded | {"up"}
    missing = {where: sorted(names - known) for where, names in referenced.items() if names - known}
    assert not missing, f"metrics no service exports: {missing}"

    # The same rules, loaded by a real Prometheus scraping this stack, evaluate without error.
    ports = {name: run.port for name, run in stack.running.items()}
    prometheus = start_prometheus(ports, ROOT, tmp_path / "prometheus", free_port())
    try:
        prometheus.wait_ready()
        async with httpx.AsyncClient(base_url=prometheus.url, timeout=5) as prom:

            async def every_service_scraped() -> bool:
                r = await prom.get("/api/v1/query", params={"query": "herald_service_ready"})
                seen = {s["metric"]["service"] for s in r.json()["data"]["result"]}
                return seen == set(ports)

            await eventually(every_service_scraped, within=60, interval=1)

            async def rules_evaluated() -> list[dict[str, object]]:
                r = await prom.get("/api/v1/rules")
                loaded = [rule for g in r.json()["data"]["groups"] for rule in g["rules"]]
                done = all(rule.get("lastEvaluation", "").startswith("20") for rule in loaded)
                return loaded if loaded and done else []

            loaded = await eventually(rules_evaluated, within=60, interval=1)
            assert len(loaded) == len(rules)
            assert all(rule["health"] == "ok" for rule in loaded), loaded
    finally:
        prometheus.stop()
