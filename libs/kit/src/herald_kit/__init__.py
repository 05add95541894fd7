"""Herald's service kit: what every service shares, and nothing service-specific."""

from herald_kit._auth import (
    Forbidden,
    KeyStore,
    Principal,
    Unauthenticated,
    hash_key,
    new_key,
    require_scopes,
)
from herald_kit._batching import (
    OPS_KEPT,
    Coalescer,
    CounterBatcher,
    IdLoader,
    InsertBatcher,
    RecentKeys,
    UpdateBatcher,
)
from herald_kit._compat import validate_own
from herald_kit._concurrent import ConcurrentConsumerLoop
from herald_kit._context import TraceContext, continued, current_trace, current_traceparent
from herald_kit._errors import (
    Conflict,
    HeraldError,
    InvalidInput,
    MalformedRequest,
    NotFound,
    PermanentError,
    PreconditionFailed,
    RetryableError,
)
from herald_kit._kafka import (
    INFRA_ERRORS,
    ConsumerLoop,
    DecodeError,
    Event,
    EventProducer,
    PartitionShare,
    broker_wait,
    cancel_and_wait,
    decode,
    encode,
    is_permanent_kafka_error,
    is_transient_db_error,
    kafka_client_options,
    start_client,
    stop_client,
)
from herald_kit._ledger import RetryingSendLedger, SendLedger, transient
from herald_kit._links import LinkExpired, LinkInvalid, LinkSigner, customer_page_headers
from herald_kit._logging import JsonFormatter, configure_logging, mask
from herald_kit._metrics import count_send_outcome, labelled, observe_provider_request
from herald_kit._mongo import Doc, create_client, insert_if_absent, ping
from herald_kit._pacing import CircuitBreaker, Pacer, backoff
from herald_kit._problems import PROBLEM, problem
from herald_kit._retention import Every, forget_before
from herald_kit._serve import serve, tune_gc
from herald_kit._service import Runtime, build_app
from herald_kit._settings import REPLAY_WINDOW, ApiKeyEntry, ServiceSettings
from herald_kit._topics_cli import all_topics, delete_namespace, ensure_topics
from herald_kit._zones import offset_change, valid_zone

__all__ = [
    "INFRA_ERRORS",
    "OPS_KEPT",
    "PROBLEM",
    "REPLAY_WINDOW",
    "ApiKeyEntry",
    "CircuitBreaker",
    "Coalescer",
    "ConcurrentConsumerLoop",
    "Conflict",
    "ConsumerLoop",
    "CounterBatcher",
    "DecodeError",
    "Doc",
    "Event",
    "EventProducer",
    "Every",
    "Forbidden",
    "HeraldError",
    "IdLoader",
    "InsertBatcher",
    "InvalidInput",
    "JsonFormatter",
    "KeyStore",
    "LinkExpired",
    "LinkInvalid",
    "LinkSigner",
    "MalformedRequest",
    "NotFound",
    "Pacer",
    "PartitionShare",
    "PermanentError",
    "PreconditionFailed",
    "Principal",
    "RecentKeys",
    "RetryableError",
    "RetryingSendLedger",
    "Runtime",
    "SendLedger",
    "ServiceSettings",
    "TraceContext",
    "Unauthenticated",
    "UpdateBatcher",
    "all_topics",
    "backoff",
    "broker_wait",
    "build_app",
    "cancel_and_wait",
    "configure_logging",
    "continued",
    "count_send_outcome",
    "create_client",
    "current_trace",
    "current_traceparent",
    "customer_page_headers",
    "decode",
    "delete_namespace",
    "encode",
    "ensure_topics",
    "forget_before",
    "hash_key",
    "insert_if_absent",
    "is_permanent_kafka_error",
    "is_transient_db_error",
    "kafka_client_options",
    "labelled",
    "mask",
    "new_key",
    "observe_provider_request",
    "offset_change",
    "ping",
    "problem",
    "require_scopes",
    "serve",
    "start_client",
    "stop_client",
    "transient",
    "tune_gc",
    "valid_zone",
    "validate_own",
]
