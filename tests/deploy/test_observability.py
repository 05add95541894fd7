"""Alert rules, dashboards, skaffold.yaml and the service Dockerfiles follow their contracts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from deploy.chartlib import ALERTS, DASHBOARDS, ROOT, alert_rules, dashboard_exprs, metric_names

from herald_devstack import SERVICES

OPERATIONS = ROOT / "docs" / "operations.md"


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool missing: run `make setup` (deploy/local/prometheus.sh install)"
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    check = subprocess.run(  # noqa: S603 - promtool from Debian
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    tests = ROOT / "deploy" / "observability" / "alerts.test.yaml"
    run = subprocess.run(  # noqa: S603
        [_promtool(), "test", "rules", str(tests)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_issue_s_alerts_are_shipped() -> None:
    names = {r.get("alert") for r in alert_rules()}
    assert names >= {
        "HeraldConsumerLagGrowing",
        "HeraldDLQReceiving",
        "HeraldProviderErrorRate",
        "HeraldSendLatencySLOBurn",
        "HeraldTimersOverdue",
        "HeraldTimersFailing",
        "HeraldSchedulerLeaseLost",
    }


def test_every_alert_links_a_runbook_section_that_exists() -> None:
    anchors = {
        "#" + re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", OPERATIONS.read_text(), flags=re.M)
    }
    alerts = [r for r in alert_rules() if "alert" in r]
    for rule in alerts:
        url = rule["annotations"]["runbook_url"]
        assert url.startswith("docs/operations.md#"), rule["alert"]
        assert url.removeprefix("docs/operations.md") in anchors, rule["alert"]


def test_metric_name_extraction_sees_metrics_not_labels_or_functions() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (group, le) (rate(herald_x_bucket{group=~"a|b", '
        'le="2.5"}[5m]))) / on (group) clamp_min(herald:y:rate5m, 1e-9) > 0 and absent(up)'
    )
    assert metric_names(expr) == {"herald_x_bucket", "herald:y:rate5m", "up"}


def test_dashboards_are_valid_grafana_json_with_queries() -> None:
    assert {p.stem for p in DASHBOARDS} == {"herald-overview", "herald-providers"}
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        assert dash["uid"] == path.stem and dash["title"].startswith("Herald")
        for panel in dash["panels"]:
            assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
            for target in panel.get("targets", []):
                assert metric_names(target["expr"]), (path.name, panel["title"])
    assert all(dashboard_exprs().values())


def test_skaffold_yaml_is_valid_and_builds_every_service() -> None:
    schema = json.loads((ROOT / "deploy/skaffold/skaffold-v4beta13.json").read_text())
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(config)
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == {f"herald-{s.name}" for s in SERVICES}
    for image, artifact in artifacts.items():
        assert (ROOT / artifact["docker"]["dockerfile"]).is_file(), image
    release = config["manifests"]["helm"]["releases"][0]
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    for s in SERVICES:
        key = "herald_" + s.name.replace("-", "_")
        assert release["setValueTemplates"][f"services.{s.name}.image.tag"] == (
            "{{.IMAGE_TAG_" + key + "}}"
        )
    profiles = {p["name"]: p for p in config["profiles"]}
    assert set(profiles) >= {"dev", "ci"}
    dev_values = profiles["dev"]["manifests"]["helm"]["releases"][0]["valuesFiles"]
    assert dev_values == ["deploy/helm/herald/ci/sandbox.yaml"]


def test_a_bad_skaffold_artifact_is_rejected_by_the_schema() -> None:
    schema = json.loads((ROOT / "deploy/skaffold/skaffold-v4beta13.json").read_text())
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    config["build"]["artifacts"][0]["dockerfile"] = "misplaced"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validators.validator_for(schema)(schema).validate(config)


@pytest.mark.parametrize("spec", SERVICES, ids=lambda s: s.name)
def test_dockerfile_follows_the_pattern(spec: object) -> None:
    from herald_devstack import ServiceSpec

    assert isinstance(spec, ServiceSpec)
    text = (ROOT / "services" / spec.name / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, flags=re.M)) >= 2, "multi-stage"
    assert re.search(rf"uv sync --frozen .*--package herald-{spec.name}\b", text)
    assert "--no-dev" in text
    user = re.search(r"^USER (\S+)", text, flags=re.M)
    assert user and user.group(1) not in ("root", "0"), "non-root"
    assert re.search(rf"^EXPOSE {spec.port}$", text, flags=re.M)
    assert re.search(rf"HEALTHCHECK .*127\.0\.0\.1:{spec.port}/healthz", text)
    assert f'"-m", "{spec.module}"' in text
    # The image must not need a writable root filesystem: bytecode is compiled at build time.
    assert "UV_COMPILE_BYTECODE=1" in text


def test_build_context_excludes_caches_and_virtualenvs() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".cache", ".venv", ".git"} <= set(ignored)


def test_every_alert_has_a_promtool_unit_test() -> None:
    tests = yaml.safe_load((ROOT / "deploy/observability/alerts.test.yaml").read_text())
    tested = {check["alertname"] for t in tests["tests"] for check in t.get("alert_rule_test", [])}
    assert {r["alert"] for r in alert_rules() if "alert" in r} <= tested


def test_no_rules_are_left_pending() -> None:
    assert not (ROOT / "deploy/observability/pending-alerts.yaml").exists()
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            text = json.dumps(panel).lower()
            assert "waiting for" not in text and "waits for" not in text, (path.name, panel)


def test_local_prometheus_config_scrapes_every_service() -> None:
    from herald_devstack._prometheus import prometheus_config

    cfg = prometheus_config({s.name: 9000 + i for i, s in enumerate(SERVICES)}, Path("/r.yaml"))
    targets = [
        t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert len(targets) == len(SERVICES)
    assert cfg["rule_files"] == ["/r.yaml"]


def _panel_exprs(dashboard: str, title_start: str) -> list[str]:
    dash = json.loads(next(p for p in DASHBOARDS if p.name == dashboard).read_text())
    (panel,) = [p for p in dash["panels"] if p["title"].startswith(title_start)]
    return [t["expr"] for t in panel["targets"]]


def test_provider_callbacks_panel_counts_every_twilio_webhook_route() -> None:
    from herald_sms_sender.api.webhooks import router as sms_webhooks
    from herald_voice_sender.api.webhooks import router as voice_webhooks

    (expr,) = _panel_exprs("herald-providers.json", "Provider callbacks")
    match = re.search(r'route=~"((?:[^"\\]|\\.)*)"', expr)
    assert match, expr
    pattern = match.group(1).replace("\\\\", "\\")
    routes = {r.path for router in (sms_webhooks, voice_webhooks) for r in router.routes}  # type: ignore[attr-defined]
    assert routes
    for route in routes:
        # Prometheus anchors a label regex at both ends.
        assert re.fullmatch(pattern, route), route


def test_rules_keep_the_namespace_the_dashboards_filter_on() -> None:
    rules = alert_rules()
    for rule in rules:
        for clause in re.findall(r"\bby\s*\(([^)]*)\)", rule["expr"]):
            labels = {label.strip() for label in clause.split(",")}
            assert "namespace" in labels, (rule.get("alert") or rule["record"], clause)
    # Every recording rule a dashboard reads is read per namespace, as its panels filter.
    recorded = {r["record"] for r in rules if "record" in r}
    for dashboard, exprs in dashboard_exprs().items():
        for expr in exprs:
            for name in metric_names(expr) & recorded:
                assert re.search(re.escape(name) + r'\{[^}]*namespace=~"\$namespace"', expr), (
                    dashboard,
                    expr,
                )
