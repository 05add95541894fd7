"""Settings base: each service subclasses it with its own env prefix, HERALD_<SERVICE>_."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiKeyEntry(BaseModel):
    """An API key as configured: its name, its hash (never the key) and its scopes."""

    name: str
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    scopes: list[str] = Field(default_factory=list)


GC_THRESHOLD = 20_000  # allocations between young-generation collections (see tune_gc)

# The longest a record may be read again after it was written: a topic keeps a record 7 days, and
# up to 7 more until its segment rolls (Kafka's default `segment.ms`), and a day's margin. A row
# that makes a record's second reading harmless (a claim, a ledger row, a seen id, a settled
# timer) is kept at least this long.
REPLAY_WINDOW = timedelta(days=15)


class ServiceSettings(BaseSettings):
    """What every service needs: where it listens, Kafka, MongoDB, keys, logging."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8000
    public_base_url: str = Field(
        default="", description="External URL of this service (links, signed webhooks)."
    )
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates (e.g. Strimzi's "
        "cluster CA); None trusts the system store.",
    )
    topic_namespace: str = Field(
        default="", description="Prefix for topic and group names; tests use a unique one."
    )
    mongo_uri: SecretStr = SecretStr("mongodb://127.0.0.1:27017/")
    mongo_db: str = ""
    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    link_secret: SecretStr = Field(
        default=SecretStr(""), description="Signs customer links; the same in every service."
    )
    log_level: str = "INFO"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    consumer_batch: int = Field(default=200, ge=1, le=10_000)
    consumer_stop_grace_seconds: float = Field(
        default=20.0,
        ge=0,
        description=(
            "On a stop (SIGTERM), how long records already being handled (a provider request, "
            "an SMTP session) may take to finish before they are cancelled. With the last "
            "commit (at most 10 s) it stays within the pod's terminationGracePeriodSeconds "
            "(30 s); raise both together."
        ),
    )
    publish_wait_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "How long an HTTP request waits for the broker to acknowledge what it publishes "
            "after its write. Past it the request answers as for a broker outage (the write is "
            "stored, and what was not published is left to the service's recovery: the "
            "preferences outbox republisher, ingest's sweeper or the caller's retry), rather "
            "than hanging while the broker is away."
        ),
    )
    retry_attempts: int = Field(default=5, ge=0, le=50)
    retry_base_seconds: float = Field(default=0.2, gt=0)
    ledger_retention_seconds: int = Field(
        default=30 * 86_400,
        ge=int(REPLAY_WINDOW.total_seconds()),
        description=(
            "How long per-message ledger rows (claims, send ledgers, statistics guards) are kept "
            "(see herald_kit's retention). A topic keeps a record 7 days, and up to 7 more until "
            "its segment rolls (Kafka's default), so a record read again still meets its row."
        ),
    )
    retention_interval_seconds: float = Field(
        default=600.0, gt=0, description="How often rows past their retention are looked for."
    )
    gc_threshold: int = Field(
        default=GC_THRESHOLD,
        ge=700,
        description="Allocations between young-generation garbage collections (Python's "
        "default is 700; see tune_gc).",
    )

    def base_url(self) -> str:
        """Where this service is reachable from outside."""
        return (self.public_base_url or f"http://{self.host}:{self.port}").rstrip("/")
