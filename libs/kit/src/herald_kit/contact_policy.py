"""The contact policy's settings: frequency caps and contact windows.

The dispatcher enforces them at send time and the scheduler's dry run predicts with them, so
both services read the same fields (each under its own prefix: HERALD_DISPATCHER_CAPS,
HERALD_SCHEDULER_CAPS, ...); keep the two equal.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from herald_kit.caps import CapLimits, default_caps
from herald_kit.windows import LocalWindow, default_legal_windows


class ContactPolicySettings(BaseModel):
    """Settings mixin: caps per priority, legal windows per region and channel, and the
    windows service-critical campaigns may use instead."""

    caps: dict[str, CapLimits] = Field(
        default_factory=default_caps,
        description="Frequency caps per priority, per customer across campaigns.",
    )
    legal_windows: dict[str, dict[str, LocalWindow]] = Field(
        default_factory=default_legal_windows,
        description=(
            "Legal contact windows per region (ISO 3166 code of the customer's phone number, or "
            "'default') and channel; a channel not listed has no legal window."
        ),
    )
    critical_windows: dict[str, LocalWindow] = Field(
        default_factory=dict,
        description="Windows per channel that service-critical campaigns may use instead.",
    )
