"""`herald-topics create` on a production cluster: three copies with an in-sync minimum of two,
over the same TLS/SASL connection the services use."""

from __future__ import annotations

from typing import Any

import pytest

from herald_kit import _topics_cli
from herald_kit._topics_cli import all_topics


class _Cluster:
    """The admin calls `ensure_topics` makes, answered as a cluster of `brokers` would."""

    def __init__(self, brokers: int) -> None:
        self.brokers = brokers
        self.options: dict[str, Any] = {}
        self.created: list[Any] = []

    def client(self, **options: Any) -> _Cluster:
        self.options = options
        return self

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": n} for n in range(self.brokers)]}

    async def list_topics(self) -> list[str]:
        return [t.name for t in self.created]

    async def create_topics(self, topics: list[Any]) -> None:
        self.created.extend(topics)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"error_code": 0, "partitions": [{"leader": 0}]} for _ in names]


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> _Cluster:
    fake = _Cluster(brokers=3)
    monkeypatch.setattr(_topics_cli, "AIOKafkaAdminClient", fake.client)
    return fake


def test_a_production_cluster_gets_three_copies_and_two_in_sync(cluster: _Cluster) -> None:
    _topics_cli.main(["create", "--bootstrap", "kafka:9092"])
    assert len(cluster.created) == len(all_topics())
    for topic in cluster.created:
        assert topic.replication_factor == 3
        assert topic.topic_configs["min.insync.replicas"] == "2"


def test_the_operator_chooses_copies_and_in_sync_minimum(cluster: _Cluster) -> None:
    cluster.brokers = 5
    _topics_cli.main(["create", "--replication-factor", "5", "--min-insync-replicas", "3"])
    assert {t.replication_factor for t in cluster.created} == {5}
    assert {t.topic_configs["min.insync.replicas"] for t in cluster.created} == {"3"}


def test_a_broker_down_while_topics_are_made_is_refused_not_given_fewer_copies(
    cluster: _Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.brokers = 2  # one of three restarting
    with pytest.raises(SystemExit):
        _topics_cli.main(["create"])
    assert "replication factor 3 needs 3 brokers; 2 up" in capsys.readouterr().err
    assert cluster.created == []


def test_a_single_development_broker_is_asked_for_one_copy(cluster: _Cluster) -> None:
    cluster.brokers = 1
    _topics_cli.main(["create", "--replication-factor", "1"])
    assert {t.replication_factor for t in cluster.created} == {1}
    assert all("min.insync.replicas" not in t.topic_configs for t in cluster.created)


def test_an_in_sync_minimum_above_the_copies_is_refused(
    cluster: _Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _topics_cli.main(["create", "--min-insync-replicas", "4"])
    assert "min.insync.replicas 4 exceeds replication factor 3" in capsys.readouterr().err
    assert cluster.created == []


def test_it_connects_as_the_services_do(cluster: _Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_KAFKA_BOOTSTRAP", "kafka-bootstrap:9093")
    monkeypatch.setenv("HERALD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("HERALD_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("HERALD_KAFKA_SASL_USERNAME", "herald")
    monkeypatch.setenv("HERALD_KAFKA_SASL_PASSWORD", "s3cret")
    _topics_cli.main(["create"])
    assert cluster.options["bootstrap_servers"] == "kafka-bootstrap:9093"
    assert cluster.options["security_protocol"] == "SASL_SSL"
    assert cluster.options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert cluster.options["sasl_plain_username"] == "herald"
    assert cluster.options["sasl_plain_password"] == "s3cret"
    assert "ssl_context" in cluster.options
