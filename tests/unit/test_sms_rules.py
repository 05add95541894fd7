"""Keywords, pacing, backoff and the circuit breaker: the rules senders rely on."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from herald_kit import CircuitBreaker, Pacer, PartitionShare, backoff
from herald_sms_sender.domain.keywords import interpret, number_key


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("STOP", "stop"),
        (" stop ", "stop"),
        ("Stop.", "stop"),
        ("unsubscribe", "stop"),
        ("退订", "stop"),
        ("td", "stop"),
        ("START", "start"),
        ("unstop", "start"),
        ("help", "help"),
        ("1", "confirm"),
        ("１", "confirm"),  # fullwidth digit from an East Asian keyboard  # noqa: RUF001
        ("2", "reschedule"),
        ("3", "callback"),
        ("Opt out", "stop"),
        ("Opt-out", "stop"),
        ("STOP ALL", "stop"),
        ("取消", "stop"),
        ("退出", "stop"),
        ("STOP。", "stop"),
        ("ＳＴＯＰ！", "stop"),  # noqa: RUF001 - fullwidth letters and mark
        ("yes", "start"),
        ("opt-in", "start"),
        ("info", "help"),
        ("", "other"),
        # The words as phones write them: emoji, invisible characters, emoji presentation,
        # brackets, a word repeated, traditional characters.
        ("STOP 🛑", "stop"),
        ("🛑 Stop", "stop"),
        ("Stop\u200b", "stop"),  # a zero-width space after it
        ("\ufeffSTOP", "stop"),  # a byte-order mark before it
        ("STOP\ufe0f", "stop"),  # the emoji-presentation selector
        ("(STOP)", "stop"),
        ("«Stop»", "stop"),
        ("“unsubscribe”", "stop"),
        ("STOP STOP", "stop"),
        ("stop, stop!", "stop"),
        ("【退订】", "stop"),
        ("退订退订", "stop"),
        ("退訂", "stop"),
        ("取消訂閱", "stop"),
        ("Start 👍", "start"),
        ("1\ufe0f\u20e3", "confirm"),  # the keycap emoji 1
        ("👍", "other"),  # decoration alone is no word
        ("🛑", "other"),
        ("11", "other"),  # a code repeated is another code
        # HELP in Chinese.
        ("帮助", "help"),
        ("幫助", "help"),
        ("求助", "help"),
        ("客服", "help"),
    ],
)
def test_keywords(text: str, intent: str) -> None:
    assert interpret(text) == intent


@pytest.mark.parametrize(
    "text",
    [
        "please stop",
        "Stop please.",
        "STOP NOW",
        "Stop, thank you!",
        "*STOP*",
        "stop texting me",
        "Please stop texting me!!",
        "stop sending me these please",
        "Stop sending me these messages",
        "stop messaging us",
        "stop these texts",
        "Can you stop texting me?",
        "unsubscribe me",
        "Unsubscribe me from this list, thanks",
        "I want to unsubscribe",
        "I'd like to opt out",
        "opt me out",
        "opt out of these texts",
        "cancel my subscription",
    ],
)
def test_a_short_clear_request_to_stop_the_texts_is_an_opt_out(text: str) -> None:
    assert interpret(text) == "stop"


@pytest.mark.parametrize(
    "text",
    [
        "don't stop",
        "Don’t stop texting me",  # noqa: RUF001 - the apostrophe phones type
        "do not unsubscribe me",
        "never stop",
        "stop by tomorrow",
        "Can you stop by?",
        "Stop by tomorrow please",
        "please stop calling me at night",  # calls, at night: for a person to read
        "stop texting me at night",
        "stop the engineer",
        "cancel this",  # the appointment, most likely
        "cancel my appointment",
        "cancel this message",
        "STOP 1",
        "help me stop",
    ],
)
def test_free_text_that_mentions_stop_is_no_opt_out(text: str) -> None:
    assert interpret(text) == "other"


@pytest.mark.parametrize(
    "text",
    [
        "I want to cancel",
        "Can you cancel?",
        "Could you cancel",
        "cancel please",
        "Ok, cancel",
        "Cancel now",
        "I want to end",
        "please end",
        "quit please",
        "取消 please",
    ],
)
def test_a_request_to_cancel_or_end_is_left_to_a_person(text: str) -> None:
    # The appointment or the case, as likely as the texts: CANCEL, END, QUIT and 取消 opt out
    # only as the whole message.
    assert interpret(text) == "other"


@pytest.mark.parametrize(
    "text", ["STOP", "please stop", "stop texting me", "CANCEL", "End.", "取消"]
)
def test_an_opt_out_word_alone_or_stop_with_courtesy_is_still_an_opt_out(text: str) -> None:
    assert interpret(text) == "stop"


def test_reply_codes_are_configurable() -> None:
    assert interpret("4", {"4": "confirm"}) == "confirm"
    assert interpret("1", {"4": "confirm"}) == "other"


def test_a_configured_code_answers_the_campaign_but_never_outranks_stop() -> None:
    codes = {"yes": "confirm", "Call me": "callback", "STOP": "confirm"}
    assert interpret("YES", codes) == "confirm"  # not the opt-in word YES
    assert interpret(" yes! ", codes) == "confirm"
    assert interpret("call-me", codes) == "callback"
    assert interpret("stop", codes) == "stop"  # an opt-out is an opt-out, whatever the campaign


def test_number_key_is_stable_and_not_the_number() -> None:
    assert number_key("+12015550100") == number_key(" +12015550100 ")
    assert "2015550100" not in number_key("+12015550100")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@given(rate=st.floats(min_value=0.5, max_value=5000), n=st.integers(min_value=2, max_value=500))
def test_pacer_spaces_sends_exactly_at_the_rate(rate: float, n: int) -> None:
    clock = Clock()
    pacer = Pacer(rate, burst=1, clock=clock)
    starts = [clock.t + pacer.reserve("+1500") for _ in range(n)]
    achieved = (n - 1) / (starts[-1] - starts[0])
    assert achieved == pytest.approx(rate, rel=1e-9)


def test_pacer_burst_and_identities_and_hold() -> None:
    clock = Clock()
    pacer = Pacer(10, burst=3, clock=clock)
    assert [pacer.reserve("a") for _ in range(4)] == pytest.approx([0, 0, 0, 0.1])
    assert pacer.reserve("b") == 0  # another sender identity has its own bucket
    pacer.hold("b", 5.0)  # the provider said Retry-After: 5
    assert pacer.reserve("b") == pytest.approx(5.0)


def test_unpaced_pacer_still_honours_retry_after() -> None:
    clock = Clock()
    pacer = Pacer(0, clock=clock)
    assert pacer.reserve("a") == 0
    pacer.hold("a", 2.0)
    assert pacer.reserve("a") == pytest.approx(2.0)
    clock.t += 3
    assert pacer.reserve("a") == 0


def test_backoff_grows_is_jittered_capped_and_respects_retry_after() -> None:
    top = lambda lo, hi: hi  # noqa: E731 - the largest jitter
    assert [backoff(a, base=0.5, cap=3, rand=top) for a in (1, 2, 3, 4, 5)] == [
        0.5,
        1.0,
        2.0,
        3,
        3,
    ]
    assert backoff(1, base=0.5, cap=3, retry_after=7, rand=top) == 7
    assert 0 <= backoff(3, base=0.5, cap=3) <= 2.0


def test_circuit_breaker_opens_then_lets_one_trial_through() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    for _ in range(3):
        assert breaker.wait() == 0
        breaker.failure()
    assert breaker.state == "open" and breaker.wait() == pytest.approx(10)
    clock.t += 10
    assert breaker.wait() == 0  # the trial
    assert breaker.wait() > 0  # others wait for its verdict
    breaker.failure()
    assert breaker.state == "open"
    clock.t += 10
    assert breaker.wait() == 0
    breaker.success()
    assert breaker.state == "closed" and breaker.wait() == 0


def test_a_trial_that_ends_without_a_verdict_is_handed_to_the_next_caller() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.failure()
    clock.t += 10
    assert breaker.wait() == 0  # the trial...
    assert breaker.wait() > 0
    breaker.release()  # ...never reached the provider (claimed elsewhere, a database error)
    assert breaker.state == "half-open"
    assert breaker.wait() == 0  # the next caller is the trial now, instead of waiting forever
    breaker.success()
    breaker.release()  # after a verdict: nothing to hand back
    assert breaker.state == "closed" and breaker.wait() == 0


async def test_only_the_caller_that_took_the_trial_hands_it_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.failure()
    clock.t += 10
    took = asyncio.Event()
    done = asyncio.Event()

    async def trial() -> None:
        assert breaker.wait() == 0
        took.set()
        await done.wait()
        breaker.release()

    async def bystander() -> None:
        breaker.release()  # an attempt that was no trial ends: the trial stays in flight

    task = asyncio.create_task(trial())
    await took.wait()
    await asyncio.create_task(bystander())
    assert breaker.wait() > 0
    done.set()
    await task
    assert breaker.wait() == 0


@given(
    rate=st.floats(min_value=0.5, max_value=500),
    owned=st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=6),
)
def test_replicas_following_their_partitions_keep_the_configured_rate_together(
    rate: float, owned: list[int]
) -> None:
    """Every replica paces alone; together, their shares of the partitions make the whole."""
    total = sum(owned)
    if total == 0:
        return
    replicas = [Pacer(rate, burst=1, clock=Clock()) for _ in owned]
    for pacer, mine in zip(replicas, owned, strict=True):
        pacer.follow(PartitionShare("sender", mine, total))
    assert sum(p.effective_rate for p in replicas) == pytest.approx(rate, rel=1e-9)
    for pacer, mine in zip(replicas, owned, strict=True):
        if mine == 0:
            continue
        starts = [pacer.reserve("+1500") for _ in range(20)]
        assert 19 / (starts[-1] - starts[0]) == pytest.approx(rate * mine / total, rel=1e-9)


def test_a_pacer_follows_every_group_feeding_it_by_their_partitions() -> None:
    pacer = Pacer(8, burst=4, clock=Clock())
    pacer.follow(PartitionShare("outbound", 1, 2))
    assert pacer.effective_rate == pytest.approx(4)
    pacer.follow(PartitionShare("callbacks", 2, 2))  # owns both call-back partitions too
    assert pacer.effective_rate == pytest.approx(6)
    assert pacer.tokens() == 3  # the burst is divided like the rate
    pacer.follow(PartitionShare("outbound", 2, 2))  # a replica left: the rest take its share
    assert pacer.effective_rate == pytest.approx(8)
    assert pacer.tokens() == 4


def test_a_replica_owning_no_partition_sends_nothing_until_a_rebalance_gives_it_some() -> None:
    async def scenario() -> None:
        clock = Clock()
        pacer = Pacer(2, clock=clock)
        pacer.follow(PartitionShare("outbound", 0, 4))
        assert pacer.tokens() == 0
        send = asyncio.create_task(pacer.acquire("a"))
        await asyncio.sleep(0.01)
        assert not send.done()  # no share of the rate, however long it waits
        pacer.follow(PartitionShare("outbound", 1, 4))
        await asyncio.wait_for(send, 1)
        assert pacer.reserve("a") == pytest.approx(2.0)  # then at its share: 0.5/s

    asyncio.run(scenario())


def test_a_retry_after_still_holds_a_replica_paced_at_its_share() -> None:
    clock = Clock()
    pacer = Pacer(10, burst=2, clock=clock)
    pacer.follow(PartitionShare("outbound", 1, 2))
    pacer.hold("a", 5.0)
    assert pacer.reserve("a") == pytest.approx(5.0)
    assert pacer.reserve("a") == pytest.approx(5.2)  # one slot of its 5/s after the hold
