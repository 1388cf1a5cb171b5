"""Herald SDK: publish to topics, steer connections and watch presence over gRPC.

::

    import herald

    with herald.Client("127.0.0.1:50051") as client:
        result = client.publish("room:general", {"text": "hello"})
        print(result.sequence)

:class:`Client` blocks; :class:`AsyncClient` offers the same calls for asyncio.
"""

from herald.aio import AsyncClient
from herald.client import Client
from herald.config import RetryPolicy, __version__
from herald.control import AsyncControlStream, ControlStream
from herald.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    HeraldError,
    Internal,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    Unknown,
)
from herald.models import (
    HealthStatus,
    HistoryMessage,
    HistoryPage,
    Member,
    NodeInfo,
    PresenceEvent,
    PresenceEventKind,
    PresenceStats,
    PublishResult,
    StreamPosition,
    SubscribeResult,
)
from herald.presence import AsyncPresenceWatch, PresenceWatch
from herald.publisher import AsyncPublisher, Publisher

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncControlStream",
    "AsyncPresenceWatch",
    "AsyncPublisher",
    "Cancelled",
    "Client",
    "ControlStream",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "HealthStatus",
    "HeraldError",
    "HistoryMessage",
    "HistoryPage",
    "Internal",
    "InvalidArgument",
    "Member",
    "NodeInfo",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PresenceEvent",
    "PresenceEventKind",
    "PresenceStats",
    "PresenceWatch",
    "PublishResult",
    "Publisher",
    "ResourceExhausted",
    "StreamPosition",
    "SubscribeResult",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "__version__",
]
