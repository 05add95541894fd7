"""RecentKeys: what a consumer wrote lately, bounded, the least recently seen forgotten first."""

from __future__ import annotations

from herald_kit import RecentKeys


def test_keys_are_remembered_up_to_the_size_and_the_least_recent_goes_first() -> None:
    recent = RecentKeys(2)
    recent.add("a")
    recent.add("b")
    assert "a" in recent  # seeing "a" makes "b" the least recent
    recent.add("c")
    assert ("a" in recent, "b" in recent, "c" in recent) == (True, False, True)


def test_adding_a_known_key_refreshes_it() -> None:
    recent = RecentKeys(2)
    recent.add("a")
    recent.add("b")
    recent.add("a")
    recent.add("c")
    assert ("a" in recent, "b" in recent) == (True, False)
    assert "never" not in recent
