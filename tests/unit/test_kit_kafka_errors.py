"""Which Kafka errors a consumer retries (an outage passes) and which it dead-letters (the same
record fails the same way however often it is sent)."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)

from herald_kit._kafka import is_permanent_kafka_error


@pytest.mark.parametrize(
    "exc", [MessageSizeTooLargeError(), RecordTooLargeError(), InvalidTopicError()]
)
def test_an_error_sending_again_would_meet_again_is_permanent(exc: KafkaError) -> None:
    assert is_permanent_kafka_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        KafkaError(),
        KafkaTimeoutError(),  # a send not acknowledged in time: the broker is down
        KafkaConnectionError(),
        NotLeaderForPartitionError(),
        ProducerClosed(),
        OutOfOrderSequenceNumber(),  # the producer is replaced, then the send retried
        TopicAuthorizationFailedError(),  # our own set-up, fixed by an operator
        OSError(),
    ],
)
def test_an_outage_is_not_permanent(exc: BaseException) -> None:
    assert not is_permanent_kafka_error(exc)
