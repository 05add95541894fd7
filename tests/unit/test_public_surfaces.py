"""The libraries' public surfaces are pinned: a change to them is deliberate."""

from __future__ import annotations

import herald_contracts
import herald_kit


def test_contracts_surface() -> None:
    assert set(herald_contracts.__all__) >= {
        "CaseChanged",
        "CaseState",
        "ContactPreferences",
        "ContactRequest",
        "OutboundSms",
        "DeliveryStatus",
        "EngagementReply",
        "TimerRequest",
        "Topics",
        "dlq_topic",
        "BY_TYPE",
        "SUPPRESSION_REASONS",
        "SuppressionReason",
    }
    for name in herald_contracts.__all__:
        assert hasattr(herald_contracts, name), name


def test_kit_surface() -> None:
    assert set(herald_kit.__all__) >= {
        "Runtime",
        "build_app",
        "ServiceSettings",
        "EventProducer",
        "ConsumerLoop",
        "decode",
        "encode",
        "mask",
        "require_scopes",
        "hash_key",
        "create_client",
        "insert_if_absent",
        "SendLedger",
        "PermanentError",
        "RetryableError",
        "problem",
        "serve",
    }
    for name in herald_kit.__all__:
        assert hasattr(herald_kit, name), name


def test_caps_surface() -> None:
    """The cap rules the dispatcher enforces and the scheduler's dry run predicts with."""
    from herald_kit import caps

    for name in ("CapLimits", "CapVerdict", "CapDecision", "check_caps", "apply_caps"):
        assert hasattr(caps, name), name
    assert set(caps.default_caps()) == {"service", "marketing"}


def test_templates_surface() -> None:
    """The template environment the dispatcher renders in and the scheduler validates with."""
    from herald_kit import templates

    for name in templates.__all__:
        assert hasattr(templates, name), name
    assert {"datetime", "date", "time", "number"} <= set(templates.message_environment().filters)
    assert templates.message_environment(html=True).autoescape
