"""Run Herald locally: every service as its own process, as `make run` and the e2e tests do."""

from herald_devstack._services import BY_NAME, SERVICES, ServiceSpec
from herald_devstack._stack import (
    ALL_SCOPES,
    SANDBOX_SID,
    SANDBOX_TOKEN,
    Running,
    Stack,
    StackConfig,
)

__all__ = [
    "ALL_SCOPES",
    "BY_NAME",
    "SANDBOX_SID",
    "SANDBOX_TOKEN",
    "SERVICES",
    "Running",
    "ServiceSpec",
    "Stack",
    "StackConfig",
]
