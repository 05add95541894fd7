"""email-sender settings (HERALD_EMAIL_SENDER_*)."""

from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from herald_kit import ServiceSettings


class Settings(ServiceSettings):
    """email-sender settings; relay credentials come from a Kubernetes secret or the env."""

    # A settings error must not print the input: it holds the link secret and SMTP password.
    model_config = SettingsConfigDict(
        env_prefix="HERALD_EMAIL_SENDER_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    port: int = 8106
    mongo_db: str = "herald_email_sender"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=2525, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        default="starttls",
        description="none (a local sink without credentials only), starttls, or implicit tls "
        "(in any case).",
    )
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_validate_certs: bool = Field(
        default=True, description="Verify the relay's TLS certificate and name (keep it on)."
    )
    smtp_ca_file: str | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the relay's certificate (a private "
        "relay); None trusts the system store.",
    )
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=4, ge=1, le=64)

    from_address: str = "updates@herald.example"
    from_name: str | None = "Herald"
    message_id_domain: str = Field(
        default="herald.example", description="Right-hand side of generated Message-IDs."
    )

    rate_per_second: float = Field(
        default=0.0,
        ge=0,
        description="Messages per second to the relay, all replicas together; 0 turns pacing off.",
    )
    rate_burst: int = Field(default=1, ge=1)
    send_concurrency: int = Field(default=32, ge=1, le=1000)
    send_attempts: int = Field(default=5, ge=1, le=50, description="Relay attempts per message.")
    send_backoff_base_seconds: float = Field(default=0.5, gt=0)
    send_backoff_cap_seconds: float = Field(default=60.0, gt=0)
    slow_down_seconds: float = Field(
        default=5.0, ge=0, description="Pause for every send after the relay answers 421."
    )
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_seconds: float = Field(default=10.0, gt=0)

    unsubscribe_base_url: str = Field(
        default="", description="Public HTTPS base of the one-click endpoint; public_base_url else."
    )
    unsubscribe_allow_http: bool = Field(
        default=False,
        description="Local development only: let the one-click URL be http://. RFC 8058 needs "
        "HTTPS, so without this an http:// address refuses to start.",
    )
    unsubscribe_max_age_seconds: int = Field(default=60 * 60 * 24 * 180, ge=60)
    opt_out_hold_seconds: float = Field(
        default=86400.0,
        ge=0,
        description=(
            "An unsubscribe also stops the emails it covers that the dispatcher hands over up "
            "to this long after it (before preferences and the dispatcher have heard of it)."
        ),
    )

    @field_validator("smtp_security", mode="before")
    @classmethod
    def _security_in_any_case(cls, value: object) -> object:
        # Operators write STARTTLS as often as starttls (and the chart compares it in lower
        # case): either spelling means the same connection.
        return value.strip().lower() if isinstance(value, str) else value

    def unsubscribe_base(self) -> str:
        """The one-click endpoint's public base: unsubscribe_base_url, else public_base_url."""
        return (self.unsubscribe_base_url or self.base_url()).rstrip("/")

    @model_validator(mode="after")
    def _credentials_only_over_tls(self) -> Self:
        # AUTH PLAIN and LOGIN carry the password merely base64-encoded: without TLS anyone on
        # the path reads it. The relay credentials go only over a TLS connection.
        password = self.smtp_password.get_secret_value() if self.smtp_password else ""
        if self.smtp_security == "none" and (self.smtp_username or password):
            raise ValueError(
                "smtp_username / smtp_password need smtp_security=starttls or tls: with "
                "smtp_security=none the relay password would cross the network in clear text "
                "(none is for a local sink without credentials)"
            )
        return self

    @model_validator(mode="after")
    def _one_click_over_https(self) -> Self:
        # With a link secret every email carries List-Unsubscribe and List-Unsubscribe-Post,
        # and RFC 8058 requires that URI to be HTTPS (mailbox providers ignore it otherwise).
        if not self.link_secret.get_secret_value():
            return self
        url = urlsplit(self.unsubscribe_base())
        allowed = ("https", "http") if self.unsubscribe_allow_http else ("https",)
        if url.scheme not in allowed or not url.netloc:
            raise ValueError(
                "unsubscribe_base_url (or public_base_url) must be an https:// URL for RFC 8058 "
                "one-click unsubscribe; set unsubscribe_allow_http=true for local development "
                "only"
            )
        return self
