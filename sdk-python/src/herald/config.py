"""Connection settings and the retry policy shared by the sync and asyncio clients."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2

from herald.errors import HeraldError, from_rpc_error

__version__ = "0.1.0"

#: The SDK logs retries (DEBUG) and presence-watch reconnects (WARNING) here.
log = logging.getLogger("herald")

#: The header that carries the API key, as ``authorization: Bearer <key>``.
AUTHORIZATION_HEADER = "authorization"

#: Default deadline for a unary call (seconds, over all retries).
DEFAULT_TIMEOUT = 10.0

HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

#: ``channel.unary_unary(*HEALTH_CHECK)`` is the grpc.health.v1 Check method.
HEALTH_CHECK = (
    HEALTH_CHECK_METHOD,
    health_pb2.HealthCheckRequest.SerializeToString,
    health_pb2.HealthCheckResponse.FromString,
)

_Channel = TypeVar("_Channel")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff and jitter.

    Only calls that are safe to repeat are retried (presence, presence stats, info,
    health, subscribe, unsubscribe, and publish / broadcast that carry an
    idempotency key), and only when they fail with one of ``retry_on`` (by default
    UNAVAILABLE: the engine could not be reached or is restarting). The call's
    timeout bounds all attempts together.
    """

    #: Attempts in all, the first one included (1 disables retrying).
    max_attempts: int = 5
    #: Delay before the first retry, in seconds.
    initial_backoff: float = 0.1
    #: Upper bound of one delay, in seconds.
    max_backoff: float = 3.0
    #: Factor between two consecutive delays.
    multiplier: float = 2.0
    #: Each delay is randomised by up to this fraction, up or down.
    jitter: float = 0.2
    #: Status codes worth another attempt.
    retry_on: frozenset[grpc.StatusCode] = field(
        default_factory=lambda: frozenset({grpc.StatusCode.UNAVAILABLE})
    )

    def backoff(self, retry: int) -> float:
        """The delay before retry number ``retry`` (0 for the first retry)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier**retry)
        spread = base * self.jitter
        return max(0.0, base + random.uniform(-spread, spread))


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)


class _Attempts:
    """Counts the attempts of one call and says whether and when to try again."""

    def __init__(self, policy: RetryPolicy, idempotent: bool, timeout: float | None) -> None:
        self._policy = policy
        self._idempotent = idempotent
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._done = 0

    def timeout(self) -> float | None:
        """The time left for the next attempt."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def next_delay(self, err: HeraldError) -> float | None:
        """The delay before the next attempt, or None when ``err`` is final."""
        self._done += 1
        if not self._idempotent or err.code not in self._policy.retry_on:
            return None
        if self._done >= self._policy.max_attempts:
            return None
        delay = self._policy.backoff(self._done - 1)
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            return None
        return delay

    def after_failure(self, e: grpc.RpcError) -> float:
        """The delay before retrying after ``e``; raises its HeraldError when final."""
        err = from_rpc_error(e)
        delay = self.next_delay(err)
        if delay is None:
            raise err from e
        log.debug("retrying in %.2fs after %s", delay, err)
        return delay


class Settings:
    """What both clients need to make calls: metadata, default timeout, retries."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None,
        metadata: Sequence[tuple[str, str]],
        credentials: grpc.ChannelCredentials | None,
        timeout: float | None,
        retry: RetryPolicy,
        channel_options: Sequence[tuple[str, str | int]],
    ) -> None:
        self.target = target
        self.credentials = credentials
        self.timeout = timeout
        self.retry = retry
        md = [(k.lower(), v) for k, v in metadata]
        if api_key is not None:
            md.append((AUTHORIZATION_HEADER, f"Bearer {api_key}"))
        self.metadata: tuple[tuple[str, str], ...] = tuple(md)
        self.channel_options: list[tuple[str, str | int]] = [
            ("grpc.primary_user_agent", f"herald-sdk-python/{__version__}"),
            *channel_options,
        ]

    def attempts(self, idempotent: bool, timeout: float | None) -> _Attempts:
        """Attempt bookkeeping for one call (``timeout=None``: the client default)."""
        return _Attempts(self.retry, idempotent, self.timeout if timeout is None else timeout)

    def channel(
        self,
        insecure: Callable[..., _Channel],
        secure: Callable[..., _Channel],
    ) -> _Channel:
        """A channel to the target, made with ``grpc``'s or ``grpc.aio``'s factories."""
        if self.credentials is None:
            return insecure(self.target, options=self.channel_options)
        return secure(self.target, self.credentials, options=self.channel_options)
