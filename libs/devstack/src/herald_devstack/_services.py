"""The services of the system and how to start each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service: its name, module, default port and settings prefix."""

    name: str
    port: int
    uses_kafka: bool = True
    uses_db: bool = True

    @property
    def module(self) -> str:
        """The importable package."""
        return "herald_" + self.name.replace("-", "_")

    @property
    def env_prefix(self) -> str:
        """Its settings prefix."""
        return "HERALD_" + self.name.upper().replace("-", "_") + "_"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("sandbox", 8100, uses_kafka=False, uses_db=False),
    ServiceSpec("preferences", 8101),
    ServiceSpec("ingest", 8102),
    ServiceSpec("scheduler", 8103),
    ServiceSpec("dispatcher", 8104),
    ServiceSpec("sms-sender", 8105),
    ServiceSpec("email-sender", 8106),
    ServiceSpec("voice-sender", 8107),
)
BY_NAME = {s.name: s for s in SERVICES}
