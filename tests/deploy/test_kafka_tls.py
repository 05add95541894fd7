"""A private Kafka CA (e.g. Strimzi's) is trusted for Kafka without replacing the system store."""

from __future__ import annotations

import ssl

import certifi
import pytest

from herald_kit import ServiceSettings
from herald_kit._kafka import kafka_client_options


def test_the_configured_ca_file_is_what_kafka_trusts() -> None:
    settings = ServiceSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=certifi.where())
    ctx = kafka_client_options(settings)["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    assert ctx.cert_store_stats()["x509_ca"] > 0


def test_a_missing_ca_file_fails_at_start_not_at_first_message() -> None:
    settings = ServiceSettings(
        kafka_security_protocol="SASL_SSL", kafka_ssl_cafile="/nonexistent/ca.crt"
    )
    with pytest.raises(FileNotFoundError):
        kafka_client_options(settings)


def test_plaintext_needs_no_ca() -> None:
    assert "ssl_context" not in kafka_client_options(ServiceSettings())
