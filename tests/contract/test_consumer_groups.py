"""Every consumer group a service registers has its DLQ topic created by `herald-topics`."""

from __future__ import annotations

from herald_kit._topics_cli import CONSUMER_GROUPS
from support import registered_consumers


def test_every_registered_group_has_a_dlq() -> None:
    groups = set(registered_consumers())
    assert groups, "no consumers found"
    assert groups <= set(CONSUMER_GROUPS), groups - set(CONSUMER_GROUPS)
