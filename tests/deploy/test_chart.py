"""The Helm chart renders valid, hardened manifests for every value set, and rejects bad values."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy.chartlib import CHART, CI_VALUES, KUBE_VERSION, ROOT, Render

from herald_devstack import BY_NAME, SERVICES, ServiceSpec
from herald_kit import ServiceSettings
from herald_kit._concurrent import STOP_COMMIT_SECONDS
from herald_kit._topics_cli import all_topics

CRDS = {"ServiceMonitor", "PrometheusRule", "KafkaTopic"}
# The structure of the operator CRDs this chart uses (a subset of their upstream schemas, which
# kubernetes-validate does not bundle): what the operators need to act on our objects.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": {"type": "object", "minProperties": 1}},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port", "path"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string", "pattern": "^/"},
                                "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                                "scrapeTimeout": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": "string"},
                                            "for": {"type": "string"},
                                            "labels": {"type": "object"},
                                            "annotations": {"type": "object"},
                                        },
                                        "additionalProperties": False,
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
    "KafkaTopic": {
        "type": "object",
        "required": ["apiVersion", "metadata", "spec"],
        "properties": {
            "apiVersion": {"enum": ["kafka.strimzi.io/v1beta2", "kafka.strimzi.io/v1"]},
            "metadata": {
                "type": "object",
                "required": ["name", "labels"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    "labels": {"type": "object", "required": ["strimzi.io/cluster"]},
                },
            },
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["partitions", "replicas"],
                "properties": {
                    "topicName": {"type": "string"},
                    "partitions": {"type": "integer", "minimum": 1},
                    "replicas": {"type": "integer", "minimum": 1, "maximum": 32767},
                    "config": {"type": "object"},
                },
            },
        },
    },
}

VALUE_SETS = [None, *CI_VALUES]
IDS = ["defaults", *(p.stem for p in CI_VALUES)]
# The defaults with the one value they require (the senders' public address).
PUBLIC_URL = ROOT / "tests" / "deploy" / "values" / "public-url.yaml"


def _values(path: Path | None) -> tuple[Path, ...]:
    return (PUBLIC_URL,) if path is None else (path,)


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


@pytest.mark.parametrize("values", VALUE_SETS, ids=IDS)
def test_every_value_set_renders_manifests_valid_for_kubernetes(
    render: Render, values: Path | None
) -> None:
    docs = render(*_values(values))
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds
    for doc in docs:
        if doc["kind"] in CRDS:
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_ci_value_sets_cover_minimal_production_and_sandbox() -> None:
    assert {p.stem for p in CI_VALUES} >= {"minimal", "production", "sandbox"}


def test_production_renders_every_resource_kind_per_service(render: Render) -> None:
    docs = render(CHART / "ci" / "production.yaml")
    enabled = {s.name for s in SERVICES} - {"sandbox"}
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ServiceMonitor"):
        labels = [d["metadata"]["labels"] for d in docs if d["kind"] == kind]
        names = {lab["app.kubernetes.io/name"] for lab in labels if "app.kubernetes.io/name" in lab}
        assert names == enabled, kind
    hpas = {d["metadata"]["name"]: d for d in docs if d["kind"] == "HorizontalPodAutoscaler"}
    # The scheduler's schedule lease allows one active replica: it is not autoscaled.
    assert "herald-scheduler" not in hpas
    lag = hpas["herald-dispatcher"]["spec"]["metrics"][1]["external"]["metric"]
    assert lag["name"] == "herald_consumer_lag_messages"
    assert lag["selector"]["matchLabels"] == {"group": "dispatcher"}


def test_a_string_for_replicas_is_rejected_by_the_values_schema(template: Any) -> None:
    done = template(ROOT / "tests" / "deploy" / "broken-values" / "replicas-string.yaml")
    assert done.returncode != 0
    assert "/services/ingest/replicas" in done.stderr


@pytest.mark.parametrize(
    "setting",
    [
        "services.ingest.replica=3",  # a typo must not be silently ignored
        "kafka.securityProtocol=TLS",
        "default.serviceMonitor.interval=often",
        "services.Bad_Name.port=80",
    ],
)
def test_values_schema_rejects_typos_and_bad_enums(template: Any, setting: str) -> None:
    done = template(sets=(setting,))
    assert done.returncode != 0, setting
    assert "schema" in done.stderr


def test_containers_are_hardened_and_probed(render: Render) -> None:
    for values in VALUE_SETS:
        for doc in render(*_values(values)):
            if doc["kind"] != "Deployment":
                continue
            pod = doc["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["automountServiceAccountToken"] is False
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True, doc["metadata"]["name"]
                assert sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
                assert c["resources"]["requests"] and c["resources"]["limits"]


SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "MONGO_URI", "API_KEYS", "ACCOUNT_SID")


def test_secrets_are_referenced_never_inlined(render: Render) -> None:
    for values in VALUE_SETS:
        docs = render(*_values(values))
        for doc in docs:
            if doc["kind"] == "ConfigMap" and "grafana_dashboard" not in doc["metadata"]["labels"]:
                leaked = [k for k in doc["data"] if any(w in k for w in SECRET_WORDS)]
                assert not leaked, (doc["metadata"]["name"], leaked)
            if doc["kind"] == "Deployment":
                for c in doc["spec"]["template"]["spec"]["containers"]:
                    for env in c.get("env", []):
                        if any(w in env["name"] for w in SECRET_WORDS):
                            assert "secretKeyRef" in env["valueFrom"], env["name"]
            assert doc["kind"] != "Secret"


def test_senders_read_provider_credentials_from_their_secrets(render: Render) -> None:
    docs = render(PUBLIC_URL)
    sms = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "herald-sms-sender"
    )
    env = {e["name"]: e for e in sms["spec"]["template"]["spec"]["containers"][0]["env"]}
    ref = env["HERALD_SMS_SENDER_TWILIO_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "herald-twilio", "key": "auth-token"}
    assert env["HERALD_SMS_SENDER_MONGO_URI"]["valueFrom"]["secretKeyRef"]["name"] == "herald-mongo"


def test_sandbox_is_off_by_default_and_on_in_the_sandbox_set(render: Render) -> None:
    def deployments(*values: Path) -> set[str]:
        return {d["metadata"]["name"] for d in render(*values) if d["kind"] == "Deployment"}

    assert "herald-sandbox" not in deployments(PUBLIC_URL)
    assert "herald-sandbox" not in deployments(CHART / "ci" / "production.yaml")
    assert "herald-sandbox" in deployments(CHART / "ci" / "sandbox.yaml")


def test_settings_reach_each_service_under_its_own_prefix(render: Render) -> None:
    docs = render(CHART / "ci" / "production.yaml")
    for spec in SERVICES:
        if spec.name == "sandbox":
            continue
        cm = next(
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == f"herald-{spec.name}"
        )
        data = cm["data"]
        p = spec.env_prefix
        assert data[f"{p}PORT"] == str(spec.port)
        assert data[f"{p}KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert data[f"{p}KAFKA_SSL_CAFILE"] == "/etc/herald/kafka-ca/ca.crt"
        assert data[f"{p}MONGO_DB"] == "herald_" + spec.name.replace("-", "_")
        assert all(k.startswith(p) for k in data)


def _settings(docs: list[dict[str, Any]], spec: ServiceSpec) -> ServiceSettings:
    """The service's own Settings built from its rendered ConfigMap (and a link secret, which
    comes from a Secret): what the pod starts with, or the error it crash-loops on."""
    settings_class = importlib.import_module(f"{spec.module}.config").Settings
    data = _named(docs, "ConfigMap", f"herald-{spec.name}")["data"]
    fields = {k.removeprefix(spec.env_prefix).lower(): v for k, v in data.items()}
    settings: ServiceSettings = settings_class(**fields, link_secret="s" * 32)
    return settings


@pytest.mark.parametrize("values", VALUE_SETS, ids=IDS)
def test_every_enabled_service_accepts_the_settings_it_is_rendered(
    render: Render, values: Path | None
) -> None:
    docs = render(*_values(values))
    enabled = {
        d["metadata"]["labels"]["app.kubernetes.io/name"] for d in docs if d["kind"] == "Deployment"
    }
    assert enabled
    for spec in SERVICES:
        if spec.name in enabled:
            _settings(docs, spec)


def test_numbers_in_env_reach_the_services_as_the_numbers_written(render: Render) -> None:
    """Helm reads a values file's numbers as float64, printed as 2.592e+06 from a million on:
    an integer setting refuses that. Each number written reaches the service unchanged."""
    path = CHART / "ci" / "numeric-settings.yaml"
    values = yaml.safe_load(path.read_text())
    docs = render(path)
    checked = 0
    for spec in SERVICES:
        if spec.name == "sandbox":
            continue
        env = values["default"]["env"] | values["services"].get(spec.name, {}).get("env", {})
        settings = _settings(docs, spec)
        for key, written in env.items():
            parsed = getattr(settings, key.lower())
            assert parsed == written, (spec.name, key, parsed)
            checked += 1
    assert checked
    big = _named(docs, "ConfigMap", "herald-dispatcher")["data"]
    assert big["HERALD_DISPATCHER_LEDGER_RETENTION_SECONDS"] == "2592000"
    assert big["HERALD_DISPATCHER_RETRY_BASE_SECONDS"] == "0.25"


@pytest.mark.parametrize("values", [(PUBLIC_URL,), (CHART / "ci" / "production.yaml",)])
def test_pods_are_given_the_time_to_finish_the_sends_in_flight(
    render: Render, values: tuple[Path, ...]
) -> None:
    """On SIGTERM a consumer lets the records it is handling (provider calls) finish within its
    stop grace and commits them (a commit is given up after STOP_COMMIT_SECONDS): a pod killed
    before would cut those calls short, and their messages would never be sent."""
    docs = render(*values)
    for spec in SERVICES:
        if spec.name == "sandbox":
            continue
        name = f"herald-{spec.name}"
        pod = _named(docs, "Deployment", name)["spec"]["template"]["spec"]
        data = _named(docs, "ConfigMap", name)["data"]
        grace = float(
            data.get(
                f"{spec.env_prefix}CONSUMER_STOP_GRACE_SECONDS",
                ServiceSettings().consumer_stop_grace_seconds,
            )
        )
        assert grace + STOP_COMMIT_SECONDS <= pod["terminationGracePeriodSeconds"], spec.name


def test_kafka_topics_match_the_contracts(render: Render) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    declared = {
        t["name"]: (t["partitions"], t["config"]) for t in values["kafka"]["topics"]["list"]
    }
    expected = {t.base: (t.partitions, t.configs()) for t in all_topics()}
    assert declared == expected
    docs = render(CHART / "ci" / "production.yaml")
    topics = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    assert set(topics) == set(expected)
    compacted = topics["cases.state.v1"]["spec"]
    assert compacted["config"]["cleanup.policy"] == "compact"
    assert compacted["replicas"] == 3 and compacted["config"]["min.insync.replicas"] == 2


def test_dashboards_are_provisioned_for_the_grafana_sidecar(render: Render) -> None:
    docs = render(PUBLIC_URL)
    maps = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(maps) == 2
    for cm in maps:
        ((name, body),) = cm["data"].items()
        dash = json.loads(body)
        assert dash["uid"] in name
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))


def test_sandbox_set_points_every_sender_at_the_sandbox(render: Render) -> None:
    docs = render(CHART / "ci" / "sandbox.yaml")
    sandbox = _named(docs, "Service", "herald-sandbox")
    ports = {p["name"]: p["port"] for p in sandbox["spec"]["ports"]}
    assert ports == {"http": 80, "smtp": 2525}
    email = _named(docs, "ConfigMap", "herald-email-sender")["data"]
    assert email["HERALD_EMAIL_SENDER_SMTP_HOST"] == "herald-sandbox"
    assert email["HERALD_EMAIL_SENDER_SMTP_PORT"] == str(ports["smtp"])
    for sender in ("sms-sender", "voice-sender"):
        data = _named(docs, "ConfigMap", f"herald-{sender}")["data"]
        prefix = "HERALD_" + sender.upper().replace("-", "_") + "_"
        assert data[prefix + "TWILIO_BASE_URL"] == "http://herald-sandbox"
    # The sink is reached without TLS, so no relay credentials go to it (in clear text).
    assert email["HERALD_EMAIL_SENDER_SMTP_SECURITY"] == "none"
    pod = _named(docs, "Deployment", "herald-email-sender")["spec"]["template"]["spec"]
    names = {e["name"] for e in pod["containers"][0]["env"]}
    assert not names & {"HERALD_EMAIL_SENDER_SMTP_USERNAME", "HERALD_EMAIL_SENDER_SMTP_PASSWORD"}


def test_smtp_credentials_on_a_connection_without_tls_are_refused_at_render(
    template: Any,
) -> None:
    # The email-sender refuses to start so configured (the password would go in clear text).
    plain = "services.email-sender.env.SMTP_SECURITY=none"
    done = template(PUBLIC_URL, sets=(plain,))
    assert done.returncode != 0
    assert "services.email-sender" in done.stderr and "clear text" in done.stderr
    without_credentials = (
        "services.email-sender.secretEnv.SMTP_USERNAME=null",
        "services.email-sender.secretEnv.SMTP_PASSWORD=null",
    )
    assert template(PUBLIC_URL, sets=(plain, *without_credentials)).returncode == 0
    for security in ("starttls", "tls", "STARTTLS"):
        done = template(PUBLIC_URL, sets=(f"services.email-sender.env.SMTP_SECURITY={security}",))
        assert done.returncode == 0, done.stderr
        # What renders, the service starts with (the chart compares the value in lower case).
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        settings = _settings(docs, BY_NAME["email-sender"])
        assert settings.smtp_security == security.lower()  # type: ignore[attr-defined]


def test_sasl_without_a_mechanism_is_refused_at_render(template: Any) -> None:
    # Rendered, every Kafka service would crash-loop: aiokafka falls back to PLAIN without
    # credentials and refuses to build a client.
    done = template(ROOT / "tests" / "deploy" / "broken-values" / "sasl-without-mechanism.yaml")
    assert done.returncode != 0
    assert "kafka.sasl.mechanism" in done.stderr and "SASL_SSL" in done.stderr


SASL = (
    "kafka.sasl.mechanism=SCRAM-SHA-512",
    "kafka.sasl.username=herald",
    "kafka.sasl.passwordSecret.name=herald-kafka-user",
)


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        (("kafka.securityProtocol=SASL_PLAINTEXT",), "kafka.sasl.mechanism"),
        (("kafka.securityProtocol=SASL_SSL", *SASL[:2]), "kafka.sasl.passwordSecret.name"),
        (("kafka.securityProtocol=SASL_SSL", SASL[0], SASL[2]), "kafka.sasl.username"),
        (("kafka.securityProtocol=SSL", *SASL), "does not use SASL"),
    ],
    ids=["plaintext-without-mechanism", "without-password", "without-user", "ssl-with-mechanism"],
)
def test_kafka_authentication_no_client_can_use_is_refused_at_render(
    template: Any, sets: tuple[str, ...], named: str
) -> None:
    done = template(PUBLIC_URL, sets=sets)
    assert done.returncode != 0
    assert named in done.stderr


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_complete_sasl_settings_render(render: Render, protocol: str) -> None:
    docs = render(PUBLIC_URL, sets=(f"kafka.securityProtocol={protocol}", *SASL))
    data = _named(docs, "ConfigMap", "herald-ingest")["data"]
    assert data["HERALD_INGEST_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


def test_prometheus_rule_carries_the_rules_file_with_published_runbook_links(
    render: Render,
) -> None:
    base = "https://runbooks.example.com/operations.md"
    docs = render(PUBLIC_URL, sets=(f"prometheusRule.runbookBaseUrl={base}",))
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    shipped = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert [g["name"] for g in rule["spec"]["groups"]] == [g["name"] for g in shipped["groups"]]
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert["annotations"]["runbook_url"].startswith(base + "#"), alert["alert"]


def test_dispatcher_links_point_at_the_public_status_page_and_preference_centre(
    render: Render,
) -> None:
    from herald_dispatcher.config import Settings
    from herald_ingest.api.status_page import router as status_router
    from herald_preferences.api.centre import router as centre_router

    docs = render(CHART / "ci" / "production.yaml")
    data = _named(docs, "ConfigMap", "herald-dispatcher")["data"]
    ingest = _named(docs, "ConfigMap", "herald-ingest")["data"]["HERALD_INGEST_PUBLIC_BASE_URL"]
    prefs = _named(docs, "ConfigMap", "herald-preferences")["data"]
    prefs_base = prefs["HERALD_PREFERENCES_PUBLIC_BASE_URL"]
    # Each link is the page's route under the public URL the chart gives the serving service.
    assert "/s/{token}" in {r.path for r in status_router.routes}  # type: ignore[attr-defined]
    assert "/p/{token}" in {r.path for r in centre_router.routes}  # type: ignore[attr-defined]
    assert data["HERALD_DISPATCHER_STATUS_URL"] == f"{ingest}/s/{{token}}"
    assert data["HERALD_DISPATCHER_PREFERENCES_URL"] == f"{prefs_base}/p/{{token}}"
    fields = {k.removeprefix("HERALD_DISPATCHER_").lower(): v for k, v in data.items()}
    settings = Settings(**fields)
    assert settings.status_url.format(token="t") == "https://herald.example.com/ingest/s/t"
    assert (
        settings.preferences_url.format(token="t") == "https://herald.example.com/preferences/p/t"
    )


def test_a_service_s_own_public_url_moves_the_links_and_is_set_once(template: Any) -> None:
    done = template(
        CHART / "ci" / "production.yaml",
        sets=("services.ingest.env.PUBLIC_BASE_URL=https://status.example.com/",),
    )
    assert done.returncode == 0, done.stderr
    # One key, the service's own: a second, derived one would make the ConfigMap ambiguous.
    assert done.stdout.count("HERALD_INGEST_PUBLIC_BASE_URL:") == 1
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert (
        _named(docs, "ConfigMap", "herald-ingest")["data"]["HERALD_INGEST_PUBLIC_BASE_URL"]
        == "https://status.example.com/"
    )
    data = _named(docs, "ConfigMap", "herald-dispatcher")["data"]
    assert data["HERALD_DISPATCHER_STATUS_URL"] == "https://status.example.com/s/{token}"
    assert data["HERALD_DISPATCHER_PREFERENCES_URL"] == (
        "https://herald.example.com/preferences/p/{token}"
    )


@pytest.mark.parametrize(
    ("sets", "named"),
    [
        ((), "global.publicBaseUrl"),
        (("services.email-sender.enabled=false",), "services.sms-sender"),
        (
            ("services.email-sender.enabled=false", "services.sms-sender.enabled=false"),
            "services.voice-sender",
        ),
        (("global.publicBaseUrl=http://herald.example.com",), "UNSUBSCRIBE_ALLOW_HTTP"),
    ],
    ids=["defaults", "sms-sender", "voice-sender", "email-over-http"],
)
def test_a_sender_without_a_usable_public_url_is_refused_at_render(
    template: Any, sets: tuple[str, ...], named: str
) -> None:
    # Rendered, these start with http://0.0.0.0:<port> as their address: the email-sender
    # refuses to start (RFC 8058 wants https) and Twilio cannot call the others back.
    done = template(sets=sets)
    assert done.returncode != 0
    assert named in done.stderr and "public" in done.stderr


@pytest.mark.parametrize(
    "sets",
    [
        ("global.publicBaseUrl=https://herald.example.com",),
        (
            "global.publicBaseUrl=http://herald.example.com",
            "services.email-sender.env.UNSUBSCRIBE_ALLOW_HTTP=true",
        ),
        (
            "services.email-sender.env.UNSUBSCRIBE_BASE_URL=https://mail.example.com",
            "services.sms-sender.env.PUBLIC_BASE_URL=https://sms.example.com",
            "services.voice-sender.env.PUBLIC_BASE_URL=https://voice.example.com",
        ),
        (
            "services.email-sender.enabled=false",
            "services.sms-sender.enabled=false",
            "services.voice-sender.enabled=false",
        ),
    ],
    ids=["https-base", "http-allowed", "per-service-urls", "no-senders"],
)
def test_senders_with_a_usable_public_url_render(render: Render, sets: tuple[str, ...]) -> None:
    from herald_email_sender.config import Settings as EmailSettings

    docs = render(sets=sets)
    email = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ("herald-email-sender")
    ]
    for cm in email:
        # The email-sender's own settings accept what the chart gives it, with a link secret.
        p = "HERALD_EMAIL_SENDER_"
        fields = {k.removeprefix(p).lower(): v for k, v in cm["data"].items()}
        EmailSettings(**fields, link_secret="s" * 32)


def _alerts_by_service(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    out: dict[str, set[str]] = {}
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            if "alert" in r:
                out.setdefault(r["alert"], set()).add(r.get("labels", {}).get("service", ""))
    return out


def test_every_enabled_service_has_an_alert_for_no_scraped_instance(render: Render) -> None:
    enabled = {s.name for s in SERVICES} - {"sandbox"}
    alerts = _alerts_by_service(render(PUBLIC_URL))
    assert alerts["HeraldServiceDown"] == enabled
    # A disabled service has no instance by design: its rules would fire for ever.
    docs = render(PUBLIC_URL, sets=("services.scheduler.enabled=false",))
    alerts = _alerts_by_service(docs)
    assert alerts["HeraldServiceDown"] == enabled - {"scheduler"}
    assert not {"HeraldSchedulerLeaseLost", "HeraldTimersOverdue", "HeraldTimersFailing"} & set(
        alerts
    )
    assert "HeraldConsumerLagGrowing" in alerts


def test_disruption_budgets_let_drains_evict_pods_that_are_not_ready(render: Render) -> None:
    # With Kafka or MongoDB down every pod is NotReady: a budget counting them would block
    # every node drain until the dependency is back.
    pdbs = [
        d for d in render(CHART / "ci" / "production.yaml") if d["kind"] == "PodDisruptionBudget"
    ]
    assert pdbs
    for pdb in pdbs:
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", pdb["metadata"]["name"]
        assert pdb["spec"]["maxUnavailable"] == 1
    strict = render(
        CHART / "ci" / "production.yaml",
        sets=("default.pdb.unhealthyPodEvictionPolicy=IfHealthyBudget",),
    )
    assert {
        d["spec"]["unhealthyPodEvictionPolicy"]
        for d in strict
        if d["kind"] == "PodDisruptionBudget"
    } == {"IfHealthyBudget"}


def _accounts(docs: list[dict[str, Any]]) -> tuple[set[str], dict[str, str]]:
    created = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    used = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["serviceAccountName"]
        for d in docs
        if d["kind"] == "Deployment"
    }
    return created, used


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        ((), None),
        (("default.serviceAccount.create=false",), "default"),
        (
            ("default.serviceAccount.create=false", "default.serviceAccount.name=herald-runner"),
            "herald-runner",
        ),
    ],
    ids=["created", "existing-default", "existing-named"],
)
def test_pods_run_as_a_service_account_that_exists(
    render: Render, sets: tuple[str, ...], expected: str | None
) -> None:
    created, used = _accounts(render(PUBLIC_URL, sets=sets))
    if expected is None:
        # The chart's own accounts, one per service.
        assert used == {name: name for name in used}
        assert set(used.values()) == created
    else:
        assert not created
        assert set(used.values()) == {expected}


def test_a_service_s_created_account_can_be_named(render: Render) -> None:
    created, used = _accounts(
        render(PUBLIC_URL, sets=("services.dispatcher.serviceAccount.name=herald-decider",))
    )
    assert used["herald-dispatcher"] == "herald-decider"
    assert "herald-decider" in created and "herald-dispatcher" not in created
