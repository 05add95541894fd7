"""A campaign as operations staff define it, validated at save time."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.cron.fields import DayOfMonthField, DayOfWeekField
from apscheduler.triggers.date import DateTrigger
from jinja2 import TemplateSyntaxError, nodes
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)

from herald_contracts import (
    INBOUND_EVENT_TYPES,
    SCHEDULED_FIRE,
    CaseState,
    Channel,
    ContactPreferences,
    MessageTemplate,
    Priority,
)
from herald_kit import InvalidInput, offset_change, valid_zone, validate_own
from herald_kit.templates import message_environment
from herald_scheduler.domain.expressions import (
    ExpressionError,
    check,
    check_condition,
    free_variables,
)

Topic = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]

# The years a one-off `at` may fall in (UTC). Far from datetime's own limits, so that neither
# APScheduler nor the delays and expiries added to a fire time can overflow.
AT_YEARS = (2000, 2999)

# A campaign id, case and customer give a request id that a replay reproduces exactly.
REQUEST_NAMESPACE = uuid.UUID("6f1c2b36-6a55-4a2f-9d0e-3a8c7f0b9e11")

# What the dispatcher passes to templates (herald_dispatcher.policy): a template naming anything
# else would fail at send time, so it is refused at save time instead.
TEMPLATE_FIELDS: dict[str, frozenset[str]] = {
    "case": frozenset(CaseState.model_fields),
    "contact": frozenset({"customer_id", "locale"}),
    "campaign": frozenset({"id", "name"}),
    "links": frozenset({"status", "preferences"}),
}


def request_id(campaign_id: str, trigger_key: str, customer_id: str) -> str:
    """Deterministic contact request id from (campaign id, trigger key, customer id)."""
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"{campaign_id}|{trigger_key}|{customer_id}"))


class RequestIds:
    """`request_id` for the customers of one (campaign, trigger key), as a fan-out needs a
    million of them: the shared prefix is hashed once and the UUID is formatted directly
    (uuid.uuid5 and UUID.__str__ were a third of a fan-out's CPU). Same ids as request_id."""

    def __init__(self, campaign_id: str, trigger_key: str) -> None:
        prefix = REQUEST_NAMESPACE.bytes + f"{campaign_id}|{trigger_key}|".encode()
        self._prefix = hashlib.sha1(prefix, usedforsecurity=False)

    def __call__(self, customer_id: str) -> str:
        digest = self._prefix.copy()
        digest.update(customer_id.encode())
        b = bytearray(digest.digest()[:16])
        b[6] = (b[6] & 0x0F) | 0x50  # version 5
        b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
        x = b.hex()
        return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _cel(value: str | None) -> str | None:
    if value is not None:
        try:
            check(value)
        except ExpressionError as exc:
            raise ValueError(str(exc)) from exc
    return value


# What an audience filter reads: the customer's preference snapshot, and their cases.
AUDIENCE_VARIABLES = frozenset({"contact", "cases"})

# What an audience reads that never holds a boolean: `contact` (a map), `cases` (a list) and the
# snapshot's fields (none of them is a boolean), so `contact.locale` alone is refused at save.
AUDIENCE_NOT_BOOLEAN = frozenset(
    {"contact", "cases"}
    | {
        f"contact.{name}"
        for name, f in ContactPreferences.model_fields.items()
        if f.annotation is not bool
    }
)


def audience_reads_cases(audience: str | None) -> bool:
    """True when an audience filter reads the customer's cases (a fire then streams them)."""
    return audience is not None and "cases" in free_variables(audience)


def template_problems(text: str, *, html: bool = False) -> list[str]:
    """Why a template cannot be used: it does not compile in the dispatcher's environment, or
    it names a field, filter or test the dispatcher does not provide."""
    env = message_environment(html=html)
    try:
        # Compiling (not only parsing) is what finds unknown filters and tests outside `if`s.
        env.compile(text)
        ast = env.parse(text)
    except TemplateSyntaxError as exc:
        return [f"template does not compile: {exc.message}"]
    problems: list[str] = []
    # Messages are self-contained: the dispatcher has no template loader.
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        problems.append(f"'{type(node).__name__.lower()}' is not allowed in a message template")
    # Jinja defers a missing filter or test inside an `{% if %}` to render time: look for them.
    for flt in ast.find_all(nodes.Filter):
        if flt.name not in env.filters:
            problems.append(f"unknown filter {flt.name!r}")
    for tst in ast.find_all(nodes.Test):
        if tst.name not in env.tests:
            problems.append(f"unknown test {tst.name!r}")
    # Names bound inside the template ({% set %}, loop targets) are the template's own, and
    # the engine's globals (range, loop, ...) are always there.
    local = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    local |= set(env.globals) | {"loop"}
    for name in ast.find_all(nodes.Name):
        if name.ctx == "load" and name.name not in TEMPLATE_FIELDS and name.name not in local:
            problems.append(f"unknown field {name.name!r}")
    # case.colour and case["colour"] are the same lookup. A computed key (case[k]) could name
    # anything, so it is refused: the fields a message uses are known when it is saved.
    looked_into: set[int] = set()
    for attr in ast.find_all(nodes.Getattr):
        problems.extend(_unknown_member(attr.node, attr.attr))
        looked_into.add(id(attr.node))
    for item in ast.find_all(nodes.Getitem):
        problems.extend(_unknown_member(item.node, item.arg))
        looked_into.add(id(item.node))
    # A record taken whole ({% set c = case %}, {% for c in [case] %}, case|attr...) carries
    # lookups past this check (c.statuz would fail every send): records are read field by field.
    for name in ast.find_all(nodes.Name):
        whole = name.ctx == "load" and name.name in TEMPLATE_FIELDS and name.name not in local
        if whole and id(name) not in looked_into:
            problems.append(f"'{name.name}' is read field by field ({name.name}.<field>)")
    return sorted(set(problems))


def _unknown_member(node: nodes.Node, member: str | nodes.Node) -> list[str]:
    if not (isinstance(node, nodes.Name) and node.ctx == "load" and node.name in TEMPLATE_FIELDS):
        return []
    if isinstance(member, nodes.Const):
        member = member.value
    elif isinstance(member, nodes.Node):
        return [f"a computed key on {node.name!r} cannot be checked; name the field"]
    if member not in TEMPLATE_FIELDS[node.name]:
        return [f"unknown field '{node.name}.{member}'"]
    return []


# Standard cron numbers days from Sunday (0 and 7 both Sunday, 1 Monday); APScheduler 3 numbers
# them from Monday (0 Monday, 6 Sunday), even in CronTrigger.from_crontab. The day-of-week field
# is therefore read here, in standard cron's terms, and handed to APScheduler as day names.
_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_NUMBERS = {name: n for n, name in enumerate(_DAY_NAMES)}


def _cron_day(value: str) -> int:
    """One day of a standard cron day-of-week field: 0-7 (0 and 7 Sunday) or a name."""
    name = value.lower()
    if name in _DAY_NUMBERS:
        return _DAY_NUMBERS[name]
    if value.isascii() and value.isdigit() and int(value) <= 7:
        return int(value)
    raise ValueError(f"day of week {value!r} is not 0-7 (0 and 7 are Sunday) or sun-sat")


def cron_day_of_week(field: str) -> str:
    """A standard cron day-of-week field (numbers from Sunday, names, ranges, lists, steps)
    as APScheduler's day names: '1-5' gives 'mon,tue,wed,thu,fri', '*/2' Sunday and every
    other day after it."""
    days: set[int] = set()
    for part in field.split(","):
        span, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not (step_text.isascii() and step_text.isdigit() and int(step_text) > 0):
                raise ValueError(f"step {step_text!r} in {part!r} must be a whole number above 0")
            step = int(step_text)
        if span == "*":
            first, last = 0, 6
        else:
            start, dash, end = span.partition("-")
            first = _cron_day(start)
            # A lone day with a step runs to Saturday; a range ending on Sunday ('fri-sun')
            # means its 7, the end of the week.
            last = _cron_day(end) if dash else (6 if step_text else first)
            if dash and last == 0 and first > 0:
                last = 7
            if first > last:
                raise ValueError(f"range {span!r} runs backwards")
        days.update(day % 7 for day in range(first, last + 1, step))
    if len(days) == len(_DAY_NAMES):
        return "*"
    return ",".join(_DAY_NAMES[day] for day in (1, 2, 3, 4, 5, 6, 0) if day in days)


class WallClockCronTrigger(CronTrigger):  # type: ignore[misc]
    """A cron schedule read on its zone's wall clock, as cron reads it, across clock changes.

    APScheduler fires a daily '30 2 * * *' twice on the day the clocks go back (02:30 happens
    twice) and skips '0 0 * * *' on a day whose midnight does not exist (clocks going forward
    at 00:00, as in Santiago). Here a time of day that happens twice fires once, at its first
    occurrence, unless the hour field is a wildcard (`*`, `*/2`: every real hour counts, as in
    cron); and a time that does not happen fires at the first instant after the gap.

    When both the day of month and the day of week are restricted (neither starts with `*`),
    a day matching either one fires, as in cron: `0 9 1 * mon` is the 1st and every Monday.
    APScheduler requires both; `either_day` says which reading the schedule has.
    """

    either_day: bool | None = False

    def __init__(self, *, either_day: bool = False, **fields: Any) -> None:
        super().__init__(**fields)
        self.either_day = either_day

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = super().__getstate__()
        state["either_day"] = self.either_day
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A trigger stored before the day rule was kept has none (None): the scheduler
        # replaces its job, as it replaces APScheduler's plain cron triggers.
        self.either_day = state.pop("either_day", None)
        super().__setstate__(state)

    def _walls(self) -> list[CronTrigger]:
        """The same fields on a clock without changes (UTC), stepping through wall times: one
        trigger, or two (day of month only, day of week only) when either day fires."""
        walls: list[CronTrigger] | None = self.__dict__.get("_wall_triggers")
        if walls is None:
            variants = [self.fields]
            if self.either_day:
                any_dow = DayOfWeekField("day_of_week", "*")
                any_dom = DayOfMonthField("day", "*")
                variants = [
                    [any_dow if f.name == "day_of_week" else f for f in self.fields],
                    [any_dom if f.name == "day" else f for f in self.fields],
                ]
            walls = []
            for fields in variants:
                wall = CronTrigger.__new__(CronTrigger)
                wall.__setstate__(
                    {
                        "version": 2,
                        "timezone": UTC,
                        "start_date": None,
                        "end_date": None,
                        "fields": fields,
                        "jitter": None,
                    }
                )
                walls.append(wall)
            self.__dict__["_wall_triggers"] = walls
        return walls

    def _next_wall(self, wall: datetime) -> datetime | None:
        """The first wall time at or after `wall` that the fields match."""
        found = [t.get_next_fire_time(None, wall.replace(tzinfo=UTC)) for t in self._walls()]
        times = [f for f in found if f is not None]
        return min(times) if times else None

    def _every_hour(self) -> bool:
        hour = next(f for f in self.fields if f.name == "hour")
        return str(hour).startswith("*")

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        # In UTC: adding to a zone's time adds on its wall clock, which loses the fold.
        start = now.astimezone(UTC)
        if previous_fire_time is not None:
            # As APScheduler: the earlier of now and just after the previous fire (a misfire
            # replay steps through the fires it missed), never the previous fire itself.
            after = previous_fire_time.astimezone(UTC) + timedelta(microseconds=1)
            start = min(start, after)
            if start <= previous_fire_time:
                start = after
        fire = self._next_from(start)
        return None if fire is None else fire.astimezone(self.timezone)

    def _next_from(self, start: datetime) -> datetime | None:
        tz = self.timezone
        local = start.astimezone(tz).replace(tzinfo=None)
        wall = local
        while True:
            found = self._next_wall(wall)
            if found is None:
                return None
            wall = found.replace(tzinfo=None)
            first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
            second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
            if first > second:
                # A time the clocks skip: fired at the first instant after the gap.
                fire = offset_change(second, first, tz)
                if fire >= start:
                    return fire
            elif first < second:
                # A time that happens twice: its first occurrence only, unless every hour
                # counts (a repeated hour is another hour then).
                if first >= start:
                    return self._unless_repeat_skipped(start, local, wall, first)
                if self._every_hour() and second >= start:
                    return second
                # Passed already: step past the repeated wall times instead of through them
                # (they end where the clocks went back, read on the clock before the change).
                back = offset_change(first, second, tz)
                repeat_end = back.replace(tzinfo=None) + (wall - first.replace(tzinfo=None))
                wall = max(wall, repeat_end - timedelta(seconds=1))
            else:
                return self._unless_repeat_skipped(start, local, wall, first)
            wall += timedelta(seconds=1)

    def _unless_repeat_skipped(
        self, start: datetime, local: datetime, wall: datetime, fire: datetime
    ) -> datetime | None:
        """`fire`, unless the clocks went back between `start` and it and every hour counts:
        then the repeated hour comes first (stepping through wall times passed over it)."""
        if self._every_hour() and fire - start > wall - local:
            return self._next_from(offset_change(start, fire, self.timezone))
        return fire


def cron_trigger(cron: str, time_zone: str) -> CronTrigger:
    """A cron trigger: five fields (minute first) or six (second first), in a named zone. The
    day of week counts as in standard cron: 0 and 7 are Sunday, 1 is Monday."""
    fields = cron.split()
    tz = ZoneInfo(time_zone)
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return WallClockCronTrigger(
            either_day=not day.startswith("*") and not dow.startswith("*"),
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=cron_day_of_week(dow),
            timezone=tz,
        )
    raise ValueError("cron needs 5 fields (m h dom mon dow) or 6 (s m h dom mon dow)")


class EventTrigger(BaseModel):
    """Fire on case changes of these types that pass the filter."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["event"] = "event"
    event_types: list[str] = Field(min_length=1, examples=[["case.updated"]])
    filter: str | None = Field(
        default=None,
        max_length=2000,
        description="CEL over `event` and `case` (the resulting state).",
        examples=['case.status == "delayed"'],
    )

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [t for t in value if t not in INBOUND_EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event type(s): {', '.join(unknown)}")
        return value

    @field_validator("filter")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        return _cel(value)


class ScheduleTrigger(BaseModel):
    """Fire on a schedule (cron in a named time zone, or once at a time) for an audience."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["schedule"] = "schedule"
    cron: str | None = Field(
        default=None,
        max_length=200,
        description=(
            "Five fields (m h dom mon dow) or six with seconds first. Days of the week as in "
            "standard cron: 0 and 7 are Sunday, 1 is Monday, or sun-sat."
        ),
        examples=["0 9 * * mon"],
    )
    at: AwareDatetime | None = Field(
        default=None,
        description="Fire once at this time: in the future when saved, in the years 2000-2999.",
    )
    time_zone: str = Field(default="UTC", examples=["Europe/Amsterdam"])
    audience: str | None = Field(
        default=None,
        max_length=2000,
        description=(
            "CEL over `contact` (the customer's preference snapshot) and `cases` (the latest "
            "state of every case naming the customer, as on cases.state.v1; empty when none); "
            "none: everyone."
        ),
        examples=['contact.locale == "nl"', 'cases.exists(c, c.status == "delayed")'],
    )

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        valid_zone(value)  # ZoneInfo alone opens 'Europe' (a directory) and fails with a 500
        return value

    @field_validator("audience")
    @classmethod
    def _audience_parses(cls, value: str | None) -> str | None:
        value = _cel(value)
        if value is not None:
            unknown = sorted(free_variables(value) - AUDIENCE_VARIABLES)
            if unknown:
                raise ValueError(
                    f"unknown variable(s) {', '.join(unknown)}: an audience reads "
                    "`contact` and `cases`"
                )
        return value

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        # The zone does not change what parses, so UTC checks the expression on its own.
        if value is not None:
            try:
                cron_trigger(value, "UTC")
            except ValueError as exc:
                raise ValueError(f"invalid cron expression: {exc}") from exc
        return value

    @field_validator("at")
    @classmethod
    def _at_in_range(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            first, last = AT_YEARS
            try:
                year = value.astimezone(UTC).year
            except OverflowError:  # 9999-12-31T23:59:59-23:59 is past datetime's last year
                year = last + 1
            if not first <= year <= last:
                raise ValueError(f"at must fall in the years {first}-{last} (UTC)")
        return value

    @model_validator(mode="after")
    def _one_schedule(self) -> ScheduleTrigger:
        if (self.cron is None) == (self.at is None):
            raise ValueError("give exactly one of cron or at")
        return self

    def check_fires(self, now: datetime) -> None:
        """InvalidInput naming the field when this schedule would never fire after `now`: an
        `at` not in the future, a cron matching no date (`0 0 31 2 *`). Checked when a campaign
        is saved and again when it goes active, not on every read: a one-off that has fired
        stays readable."""
        if self.at is not None and self.at <= now:
            raise InvalidInput(
                "at is not in the future: the campaign would never fire",
                field="trigger.schedule.at",
            )
        if (
            self.cron is not None
            and self.apscheduler_trigger().get_next_fire_time(None, now) is None
        ):
            raise InvalidInput(
                f"cron {self.cron!r} matches no date to come: the campaign would never fire",
                field="trigger.schedule.cron",
            )

    def check_audience(self) -> None:
        """InvalidInput naming the field when the audience can yield true or false for no
        customer (a constant such as `1 + 1`, `contact.locale` alone, a `matches` pattern that
        is no regular expression): accepted, every fire would contact nobody. Checked when a
        campaign is saved, not when a stored one is read, so campaigns saved before stay
        readable; what only a customer's values can tell is counted per fire
        (`audience_errors`)."""
        if self.audience is not None:
            try:
                check_condition(self.audience, AUDIENCE_NOT_BOOLEAN)
            except ExpressionError as exc:
                raise InvalidInput(
                    f"the audience can never select a customer: {exc}",
                    field="trigger.schedule.audience",
                ) from exc

    def apscheduler_trigger(self) -> BaseTrigger:
        """The APScheduler trigger for this schedule."""
        if self.cron is not None:
            return cron_trigger(self.cron, self.time_zone)
        assert self.at is not None
        return DateTrigger(run_date=self.at, timezone=ZoneInfo(self.time_zone))


class Timing(BaseModel):
    """When, after its trigger, a contact goes out, and until when it still may."""

    model_config = ConfigDict(extra="forbid")

    delay_seconds: int = Field(default=0, ge=0, le=30 * 86400)
    coalesce_seconds: int = Field(
        default=0,
        ge=0,
        le=86400,
        description="Changes to one case within this window give one contact, the latest state.",
    )
    expires_after_seconds: int | None = Field(
        default=None, ge=1, le=90 * 86400, description="Never send later than this after trigger."
    )

    @model_validator(mode="after")
    def _expiry_after_delay(self) -> Timing:
        if self.expires_after_seconds is not None:
            wait = max(self.delay_seconds, self.coalesce_seconds)
            if self.expires_after_seconds <= wait:
                raise ValueError(
                    "expires_after_seconds must be later than the delay and coalescing window"
                )
        return self

    @property
    def wait_seconds(self) -> int:
        """How long a triggered contact waits before it is requested."""
        return max(self.delay_seconds, self.coalesce_seconds)


class Escalation(BaseModel):
    """What ends a contact, and how it moves to the customer's next channel."""

    model_config = ConfigDict(extra="forbid")

    success: Literal["delivered", "engaged"] = "delivered"
    escalate_after_seconds: int | None = Field(default=None, ge=0, le=7 * 86400)


class Limits(BaseModel):
    """Pace and cap contributions."""

    model_config = ConfigDict(extra="forbid")

    rate_per_second: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description=(
            "Per-campaign request rate: paces an audience fan-out, and event-triggered requests "
            "(each waits for its slot in a durable timer row)."
        ),
    )
    cap_policy: Literal["defer", "suppress"] = Field(
        default="defer", description="What a frequency cap does to a contact: defer or suppress."
    )
    counts_towards_cap: bool = Field(
        default=True,
        description=(
            "False: contacts neither count towards the customer's frequency caps nor are held "
            "back by them (e.g. service notices the customer must get)."
        ),
    )


def _trigger_kind(value: Any) -> str:
    # Drafts written before schedules existed have no kind: they are event triggers.
    kind = value.get("kind", "event") if isinstance(value, dict) else getattr(value, "kind", "")
    return str(kind)


Trigger = Annotated[
    Annotated[EventTrigger, Tag("event")] | Annotated[ScheduleTrigger, Tag("schedule")],
    Discriminator(_trigger_kind),
]


# Drafts as the API documents them (also inside the stored campaign's example).
CAMPAIGN_EXAMPLES: list[JsonValue] = [
    {
        "name": "Delayed parcel updates",
        "topic": "service-updates",
        "priority": "service",
        "trigger": {
            "kind": "event",
            "event_types": ["case.updated"],
            "filter": 'case.status == "delayed"',
        },
        "messages": {"sms": {"en": {"body": "Your case {{ case.case_id }}: {{ case.status }}"}}},
        "timing": {"coalesce_seconds": 300, "expires_after_seconds": 86400},
        "still_applies": 'case.status == "delayed"',
    },
    {
        "name": "Monday reminder",
        "topic": "reminders",
        "priority": "marketing",
        "trigger": {
            "kind": "schedule",
            "cron": "0 9 * * mon",
            "time_zone": "Europe/Amsterdam",
            "audience": 'contact.locale == "nl"',
        },
        "messages": {"email": {"nl": {"subject": "Herinnering", "body": "Hallo"}}},
    },
    {
        "name": "Daily note to customers with a delayed case",
        "topic": "service-updates",
        "priority": "service",
        "trigger": {
            "kind": "schedule",
            "cron": "0 10 * * *",
            "time_zone": "Europe/Amsterdam",
            "audience": 'cases.exists(c, c.status == "delayed") && contact.locale == "en"',
        },
        "messages": {"sms": {"en": {"body": "One of your cases is delayed; we are on it."}}},
        "timing": {"expires_after_seconds": 28800},
    },
]


class CampaignIn(BaseModel):
    """A campaign draft."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": CAMPAIGN_EXAMPLES})

    name: str = Field(min_length=1, max_length=200)
    topic: Topic
    priority: Priority = Priority.SERVICE
    trigger: Trigger
    messages: dict[Channel, dict[Locale, MessageTemplate]] = Field(min_length=1)
    still_applies: str | None = Field(default=None, max_length=2000)
    max_attempts: int = Field(default=3, ge=1, le=10)
    timing: Timing = Field(default_factory=Timing)
    escalation: Escalation = Field(default_factory=Escalation)
    limits: Limits = Field(default_factory=Limits)
    critical: bool = False

    @field_validator("messages")
    @classmethod
    def _templates_compile(
        cls, value: dict[Channel, dict[str, MessageTemplate]]
    ) -> dict[Channel, dict[str, MessageTemplate]]:
        for channel, by_locale in value.items():
            if not by_locale:
                raise ValueError(f"{channel}: at least one locale is needed")
            for locale, tpl in by_locale.items():
                for part in ("body", "subject", "html"):
                    text = getattr(tpl, part)
                    if text is None:
                        continue
                    problems = template_problems(text, html=part == "html")
                    if problems:
                        raise ValueError(f"{channel}.{locale}.{part}: {'; '.join(problems)}")
        return value

    @field_validator("still_applies")
    @classmethod
    def _condition_parses(cls, value: str | None) -> str | None:
        return _cel(value)


CampaignStatus = Literal["draft", "active", "paused", "archived"]


def definition_of(doc: dict[str, Any]) -> CampaignIn:
    """The stored definition as a model."""
    return validate_own(CampaignIn, doc["definition"], kind="campaigns.definition")


def fire_key(scheduled: datetime) -> str:
    """A schedule's trigger key: its scheduled fire time in UTC, to the second."""
    return SCHEDULED_FIRE + scheduled.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ")
