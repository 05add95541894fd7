"""Customer links: signed for one purpose, expiring, tamper-evident."""

from __future__ import annotations

import pytest

from herald_kit import LinkExpired, LinkInvalid, LinkSigner


def test_round_trip() -> None:
    signer = LinkSigner("s3cret", "preferences")
    token = signer.sign({"customer_id": "c1"})
    assert signer.verify(token, max_age_seconds=60) == {"customer_id": "c1"}


def test_tampered_or_other_purpose_is_invalid() -> None:
    signer = LinkSigner("s3cret", "preferences")
    token = signer.sign({"customer_id": "c1"})
    with pytest.raises(LinkInvalid):
        signer.verify(token[:-2] + ("AA" if not token.endswith("AA") else "BB"), max_age_seconds=60)
    with pytest.raises(LinkInvalid):
        LinkSigner("s3cret", "case-status").verify(token, max_age_seconds=60)
    with pytest.raises(LinkInvalid):
        LinkSigner("other", "preferences").verify(token, max_age_seconds=60)


def test_expired() -> None:
    signer = LinkSigner("s3cret", "preferences")
    token = signer.sign({"customer_id": "c1"})
    with pytest.raises(LinkExpired):
        signer.verify(token, max_age_seconds=-1)
