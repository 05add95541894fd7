"""SMS sender settings (HERALD_SMS_SENDER_*)."""

import re

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from herald_contracts import Intent
from herald_kit import ServiceSettings
from herald_sms_sender.domain.keywords import DEFAULT_REPLIES

# A BCP 47 language tag, as herald_contracts' events carry it.
LOCALE_TAG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
# HELP answered in Chinese to a customer the last SMS was written to in Chinese: the brand, the
# help contact and how to opt out ("reply 退订 or STOP to cancel"), as in the English answer;
# written with Chinese (full-width) punctuation.
HELP_TEXTS = {
    "zh": "{brand}：您的案件通知。帮助：{contact}。回复“退订”或 STOP 取消。",  # noqa: RUF001
    "zh-Hant": "{brand}：您的案件通知。協助：{contact}。回覆「退訂」或 STOP 取消。",  # noqa: RUF001
}


class Settings(ServiceSettings):
    """SMS sender settings; credentials come from a Kubernetes secret or the environment."""

    model_config = SettingsConfigDict(env_prefix="HERALD_SMS_SENDER_", extra="ignore", frozen=True)

    port: int = 8105
    mongo_db: str = "herald_sms_sender"
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_base_url: str | None = Field(
        default=None, description="Override Twilio's API host (the sandbox in development)."
    )
    twilio_timeout_seconds: float = Field(default=10.0, gt=0)
    from_number: str = "+15005550006"
    messaging_service_sid: str | None = None
    rate_per_second: float = Field(
        default=0.0,
        ge=0,
        description="Sends per second per sender identity, all replicas together; 0 = no pacing.",
    )
    rate_burst: int = Field(default=1, ge=1, description="Sends allowed back to back when idle.")
    # A message spends most of its time waiting (the ledger's writes, the provider, the status
    # publish): at 64 the sender capped the e2e benchmark near 185 SMS/s with the CPU to spare.
    concurrency: int = Field(
        default=200,
        ge=1,
        le=1000,
        description="Messages in flight (at most the consumer batch, 200 by default).",
    )
    send_attempts: int = Field(default=6, ge=1, le=50)
    send_backoff_seconds: float = Field(default=0.5, gt=0)
    send_backoff_cap_seconds: float = Field(default=30.0, gt=0)
    breaker_threshold: int = Field(default=20, ge=1)
    breaker_cooldown_seconds: float = Field(default=5.0, gt=0)
    brand: str = "Herald"
    help_text: str = Field(
        default="{brand}: updates about your case. Help: {contact}. Reply STOP to opt out.",
        description=(
            "The HELP answer in English, and in any locale help_texts has no answer close to; "
            "{brand} and {contact} are filled in."
        ),
    )
    help_texts: dict[str, str] = Field(
        default_factory=lambda: dict(HELP_TEXTS),
        description=(
            "The HELP answer per locale (BCP 47) of the last message sent to the number, the "
            "closest by language, script and region (zh-TW reads zh-Hant); help_text for any "
            "other locale, or a number never messaged. {brand} and {contact} are filled in. "
            "Setting it replaces the defaults (Chinese, simplified and traditional)."
        ),
    )
    help_contact: str = "support@example.com"
    reply_keywords: dict[str, Intent] = Field(
        default_factory=lambda: dict(DEFAULT_REPLIES),
        description="Campaign reply codes and what they mean.",
    )

    @field_validator("help_texts")
    @classmethod
    def _locale_tags(cls, value: dict[str, str]) -> dict[str, str]:
        # A key that is no language tag would never be chosen: refused at start, not ignored.
        wrong = [key for key in value if not LOCALE_TAG.fullmatch(key)]
        if wrong:
            raise ValueError(f"not BCP 47 language tags: {', '.join(map(repr, wrong))}")
        return value

    def help_answers(self) -> dict[str, str]:
        """The HELP answers by locale, brand and contact filled in."""
        return {
            locale: text.format(brand=self.brand, contact=self.help_contact)
            for locale, text in self.help_texts.items()
        }
