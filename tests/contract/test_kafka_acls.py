"""The Kafka ACLs docs/operations.md lists per service are the ones its code needs.

A broker with authorization (a Strimzi KafkaUser with `authorization: simple`) refuses what its
ACLs leave out: a group the service joins, a topic it reads or writes, its DLQs. The table is
checked against the consumer groups each service registers (and the topics they read), the DLQ
of each group, and the topics its code names (an event type it publishes, a topic it reads), so a
new group or topic fails here until the table has it. The KafkaUser example below the table must
grant the table's union.
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

import herald_contracts
from herald_contracts import EventType, Topic, Topics, dlq_topic
from herald_devstack import SERVICES, ServiceSpec

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
SECTION = "### Kafka ACLs"
KAFKA_SERVICES = [s for s in SERVICES if s.uses_kafka]
# Shared libraries that publish on a service's behalf, by the package a service imports.
LIBRARIES = {"herald_twilio": ROOT / "libs" / "twilio" / "src"}


class Acls(NamedTuple):
    """One service's row of the table."""

    groups: set[str]
    reads: set[str]
    writes: set[str]


def _section() -> str:
    text = OPERATIONS.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    nxt = text.find("\n### ", start + len(SECTION))
    stops = [i for i in (end, nxt) if i != -1]
    return text[start : min(stops) if stops else len(text)]


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


@cache
def documented() -> dict[str, Acls]:
    """The table: | service | consumer groups | topics read | topics written |."""
    rows: dict[str, Acls] = {}
    for line in _section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        (service,) = _names(cells[0])
        rows[service] = Acls(_names(cells[1]), _names(cells[2]), _names(cells[3]))
    return rows


@cache
def consumed(spec: ServiceSpec) -> dict[str, set[str]]:
    """Consumer group -> the topics it reads, from the service's app as built."""
    app_mod = importlib.import_module(f"{spec.module}.app")
    cfg_mod = importlib.import_module(f"{spec.module}.config")
    app = app_mod.create_app(cfg_mod.Settings(_env_file=None))
    return {loop.group: {t.base for t in loop.topics} for loop in app.state.runtime.consumers}


def _sources(spec: ServiceSpec) -> list[Path]:
    own = ROOT / "services" / spec.name / "src"
    files = list(own.rglob("*.py"))
    text = "\n".join(f.read_text() for f in files)
    for package, path in LIBRARIES.items():
        if re.search(rf"\b(from|import) {package}\b", text):
            files += path.rglob("*.py")
    return files


class Named(NamedTuple):
    """Topics a service's code names."""

    topics: frozenset[str]  # as `Topics.X` (`Topics.outbound(...)`: every outbound one)
    published: frozenset[str]  # those of the event types it imports from herald_contracts


@cache
def named(spec: ServiceSpec) -> Named:
    """The topics the service's code (and a library publishing for it) names."""
    every: set[str] = set()
    published: set[str] = set()
    outbound = {Topics.outbound(c).base for c in ("sms", "email", "voice")}
    for path in _sources(spec):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "Topics"
            ):
                topic = getattr(Topics, node.attr, None)
                if node.attr == "outbound":
                    every |= outbound
                elif isinstance(topic, Topic):
                    every.add(topic.base)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "herald_contracts"
            ):
                for alias in node.names:
                    value: Any = getattr(herald_contracts, alias.name, None)
                    if isinstance(value, EventType):
                        published.add(value.topic.base)
    return Named(frozenset(every), frozenset(published))


def test_every_kafka_service_has_a_row() -> None:
    assert set(documented()) == {s.name for s in KAFKA_SERVICES}


@pytest.mark.parametrize("spec", KAFKA_SERVICES, ids=lambda s: s.name)
def test_a_service_s_acls_are_what_its_code_needs(spec: ServiceSpec) -> None:
    row = documented()[spec.name]
    groups = consumed(spec)
    code = named(spec)
    # Its consumer groups, each reading its topics and writing its DLQ.
    assert row.groups == set(groups)
    reading = set().union(*groups.values())
    assert reading <= row.reads, reading - row.reads
    dlqs = {dlq_topic(g).base for g in groups}
    assert {t for t in row.writes if t.startswith("dlq.")} == dlqs
    # Every other topic it names, read or written, and none it does not.
    writes = row.writes - dlqs
    every = code.topics | code.published | reading
    assert row.reads | writes == every, (row.reads | writes) ^ every
    # It reads with its groups, or (without one) a topic it names; it writes what it publishes,
    # every topic of an event type it names and does not read among them.
    assert row.reads <= reading | code.topics, row.reads - reading - code.topics
    assert code.published - reading <= writes <= code.published
    known = {t.base for t in Topics.all()}
    assert row.reads | writes <= known


def test_the_kafka_user_example_grants_the_table() -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", _section(), flags=re.DOTALL)
    user = yaml.safe_load(block)
    assert user["kind"] == "KafkaUser"
    granted: dict[tuple[str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        assert resource["patternType"] == "literal"
        key = (resource["type"], resource["name"])
        granted.setdefault(key, set()).update(acl["operations"])
    expected: dict[tuple[str, str], set[str]] = {}
    for row in documented().values():
        for group in row.groups:
            expected.setdefault(("group", group), set()).add("Read")
        for topic in row.reads:
            expected.setdefault(("topic", topic), set()).add("Read")
        for topic in row.writes:
            expected.setdefault(("topic", topic), set()).add("Write")
    assert granted == expected
