"""Builds the herald.v1 request messages and reads the stream responses.

Shared by the sync and asyncio clients so that both send exactly the same thing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

from herald import payload
from herald.errors import HeraldError, error_for_number
from herald.models import PublishResult, StreamPosition
from herald.v1 import herald_pb2 as pb


def _topics(topics: str | Iterable[str]) -> list[str]:
    # A lone string is one topic, not a sequence of one-letter topics.
    return [topics] if isinstance(topics, str) else list(topics)


def publish(
    topic: str,
    data: payload.Payload,
    *,
    ttl: payload.TTL | None,
    idempotency_key: str | None,
    content_type: str | None,
) -> pb.PublishRequest:
    return publish_sized(
        topic, data, ttl=ttl, idempotency_key=idempotency_key, content_type=content_type
    )[0]


def publish_sized(
    topic: str,
    data: payload.Payload,
    *,
    ttl: payload.TTL | None,
    idempotency_key: str | None,
    content_type: str | None,
) -> tuple[pb.PublishRequest, int]:
    """The request and an upper bound of its encoded size inside a PublishStream request.

    The size comes from the inputs (``ByteSize()`` would encode the message, a copy
    of the payload, once more just to measure it).
    """
    body, ctype = payload.encode(data, content_type)
    size = len(body) + _utf8_len(topic) + _utf8_len(ctype) + STREAM_MESSAGE_OVERHEAD
    # Only the fields that are set: this runs once per message of a publisher.
    msg = pb.PublishRequest(topic=topic, data=body, content_type=ctype)
    if idempotency_key is not None:
        msg.idempotency_key = idempotency_key
        size += _utf8_len(idempotency_key)
    ttl_ms = payload.ttl_ms(ttl)
    if ttl_ms is not None:
        msg.ttl_ms = ttl_ms
    return msg, size


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode())


def broadcast(
    topics: Iterable[str],
    data: payload.Payload,
    *,
    ttl: payload.TTL | None,
    idempotency_key: str | None,
    content_type: str | None,
) -> pb.BroadcastRequest:
    body, ctype = payload.encode(data, content_type)
    return pb.BroadcastRequest(
        topics=_topics(topics),
        data=body,
        content_type=ctype,
        idempotency_key=idempotency_key,
        ttl_ms=payload.ttl_ms(ttl),
    )


def target(connection_id: str | None, user_id: str | None) -> pb.Target:
    """A Target for exactly one of a connection id or a user id."""
    if (connection_id is None) == (user_id is None):
        raise ValueError("give exactly one of connection_id= or user_id=")
    if connection_id is not None:
        return pb.Target(connection_id=connection_id)
    assert user_id is not None
    return pb.Target(user_id=user_id)


def subscribe(
    topics: str | Iterable[str], connection_id: str | None, user_id: str | None
) -> pb.SubscribeRequest:
    return pb.SubscribeRequest(target=target(connection_id, user_id), topics=_topics(topics))


def subscribe_since(
    since: Mapping[str, StreamPosition],
    topics: str | Iterable[str],
    connection_id: str | None,
    user_id: str | None,
) -> pb.SubscribeRequest:
    """A Subscribe with ``since``: its topics are ``topics``, then those of ``since``
    not among them (the engine wants every ``since`` topic in ``topics``)."""
    names = _topics(topics)
    seen = set(names)
    names.extend(t for t in since if t not in seen)
    return pb.SubscribeRequest(
        target=target(connection_id, user_id),
        topics=names,
        since={t: p.to_pb() for t, p in since.items()},
    )


def history(
    topic: str, since: StreamPosition | None, limit: int, reverse: bool
) -> pb.HistoryRequest:
    req = pb.HistoryRequest(topic=topic, limit=limit, reverse=reverse)
    if since is not None:
        req.since.CopyFrom(since.to_pb())
    return req


def unsubscribe(
    topics: str | Iterable[str], connection_id: str | None, user_id: str | None
) -> pb.UnsubscribeRequest:
    return pb.UnsubscribeRequest(target=target(connection_id, user_id), topics=_topics(topics))


def disconnect(
    connection_id: str | None, user_id: str | None, code: int, reason: str, reconnect: bool
) -> pb.DisconnectRequest:
    return pb.DisconnectRequest(
        target=target(connection_id, user_id), code=code, reason=reason, reconnect=reconnect
    )


def watch(
    topics: str | Iterable[str], include_snapshot: bool, include_connections: bool
) -> pb.WatchPresenceRequest:
    return pb.WatchPresenceRequest(
        topics=_topics(topics),
        include_snapshot=include_snapshot,
        include_connections=include_connections,
    )


def broadcast_results(resp: pb.BroadcastResponse) -> list[PublishResult]:
    return [PublishResult.from_pb(r) for r in resp.results]


# --- stream responses: (id, result or error) --------------------------------------


#: Most messages one PublishStream request carries (``message`` and ``more`` together);
#: the engine refuses more than 1024 in ``more``.
MAX_STREAM_BATCH = 1025

#: Most bytes of messages one PublishStream request carries, unless its first message
#: alone is larger (a request always carries at least one). The engine refuses a gRPC
#: request larger than its ``grpc_max_message_bytes``, and the request's stream with it;
#: by default that limit is ``max_payload_bytes`` plus room for topic lists (about
#: 394 KB with the default 64 KiB payloads), so one message always fits and 256 KiB of
#: them do too.
MAX_STREAM_BATCH_BYTES = 256 << 10

#: What one message adds to a PublishStream request beyond its payload and strings, at
#: most: the field tags and lengths, ``ttl_ms``, and its own tag and length in ``more``.
STREAM_MESSAGE_OVERHEAD = 32


def stream_batch(sizes: list[int]) -> tuple[int, int]:
    """How many of the queued messages (``sizes``, at least one, in queue order) the next
    request carries, and their summed size: as many from the front as keep within
    MAX_STREAM_BATCH and MAX_STREAM_BATCH_BYTES, and always the first."""
    limit, max_bytes = MAX_STREAM_BATCH, MAX_STREAM_BATCH_BYTES
    total = sizes[0]
    n = 1
    for size in itertools.islice(sizes, 1, limit):
        if total + size > max_bytes:
            break
        total += size
        n += 1
    return n, total


def publish_stream_request(
    client_seq: int, msgs: list[pb.PublishRequest]
) -> pb.PublishStreamRequest:
    """One request for ``msgs`` (at least one), numbered ``client_seq``, ``client_seq + 1``, ..."""
    return pb.PublishStreamRequest(client_seq=client_seq, message=msgs[0], more=msgs[1:])


def _no_result() -> HeraldError:
    return HeraldError(
        "the engine's answer has no result for this message (an engine that predates"
        " batched PublishStream requests ignores all but the first message of a request)"
    )


def _publish_result(
    which: str | None, r: pb.PublishStreamResponse | pb.PublishResult
) -> PublishResult | HeraldError:
    if which == "ack":
        return PublishResult(r.ack.sequence, r.ack.duplicate)
    if which == "error":
        return error_for_number(r.error.code, r.error.message)
    return _no_result()


def publish_stream_results(
    resp: pb.PublishStreamResponse, count: int
) -> list[PublishResult | HeraldError]:
    """The results of the ``count`` messages of the request ``resp`` answers, in order.

    A message the response has no result for gets an error (never silence).
    """
    results = [_publish_result(resp.WhichOneof("result"), resp)]
    results.extend(_publish_result(r.WhichOneof("result"), r) for r in resp.more[: count - 1])
    while len(results) < count:
        results.append(_no_result())
    return results


ControlCommand = pb.SubscribeRequest | pb.UnsubscribeRequest | pb.DisconnectRequest


def control_request(request_id: int, command: ControlCommand) -> pb.ControlRequest:
    if isinstance(command, pb.SubscribeRequest):
        return pb.ControlRequest(request_id=request_id, subscribe=command)
    if isinstance(command, pb.UnsubscribeRequest):
        return pb.ControlRequest(request_id=request_id, unsubscribe=command)
    return pb.ControlRequest(request_id=request_id, disconnect=command)


def control_result(resp: pb.ControlResponse) -> tuple[int, int | HeraldError]:
    """The number of connections a command reached, or its error."""
    which = resp.WhichOneof("result")
    if which == "subscribe":
        return resp.request_id, resp.subscribe.connections
    if which == "unsubscribe":
        return resp.request_id, resp.unsubscribe.connections
    if which == "disconnect":
        return resp.request_id, resp.disconnect.connections
    if which == "error":
        return resp.request_id, error_for_number(resp.error.code, resp.error.message)
    return resp.request_id, HeraldError("control response without a result")
