#!/usr/bin/env python3
"""Publishes to a Herald engine with the Python SDK for a while and prints one JSON line.

::

    python bench/sdk/python/driver.py --addr 127.0.0.1:50051 --mode stream --duration 5

Modes:

- ``unary``: ``Client.publish`` calls one after another; latency is per call.
- ``unary-async``: the same with ``AsyncClient.publish``.
- ``stream``: ``Client.publisher()`` with up to ``--window`` messages waiting for
  their ack; latency is from ``publish`` to the ack, sampled on every 32nd message.
- ``stream-async``: the same with ``AsyncClient.publisher()``.

Output (one line on stdout)::

    {"sdk":"python","mode":"unary","messages":N,"seconds":S,"per_s":R,
     "p50_us":X,"p99_us":Y,"errors":E}

``messages`` counts acknowledged messages; ``seconds`` runs from the first publish
to the last answer (a stream's tail of acks included). The payload is
``--payload-bytes`` bytes (sent as bytes, so the engine relays it as ``b64``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import concurrent.futures
import json
import sys
import time
from collections.abc import Callable

import herald

MODES = ("unary", "unary-async", "stream", "stream-async")


class Stats:
    """Counts answers and keeps every latency (nanoseconds)."""

    def __init__(self) -> None:
        self.latencies: list[int] = []
        self.messages = 0
        self.errors = 0
        self.start = time.perf_counter_ns()
        self.end = self.start

    def ok(self, latency_ns: int) -> None:
        self.latencies.append(latency_ns)
        self.messages += 1

    def tally(
        self,
        fut: concurrent.futures.Future[herald.PublishResult] | asyncio.Future[herald.PublishResult],
    ) -> None:
        """For the stream modes: count an answered message as acked or failed."""
        if fut.cancelled() or fut.exception() is not None:
            self.errors += 1
        else:
            self.messages += 1

    def line(self, mode: str) -> str:
        seconds = max(1e-9, (self.end - self.start) / 1e9)
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            if not lat:
                return 0.0
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] / 1000, 1)

        return json.dumps(
            {
                "sdk": "python",
                "mode": mode,
                "messages": self.messages,
                "seconds": round(seconds, 3),
                "per_s": round(self.messages / seconds, 1),
                "p50_us": pct(0.50),
                "p99_us": pct(0.99),
                "errors": self.errors,
            },
            separators=(",", ":"),
        )


def run_unary(client: herald.Client, topic: str, data: bytes, duration: float) -> Stats:
    client.publish(topic, data)  # opens the channel (or fails) before the clock starts
    stats = Stats()
    deadline = stats.start + int(duration * 1e9)
    now = stats.start
    while now < deadline:
        try:
            client.publish(topic, data)
        except herald.HeraldError:
            stats.errors += 1
            now = time.perf_counter_ns()
        else:
            end = time.perf_counter_ns()
            stats.ok(end - now)
            now = end
    stats.end = now
    return stats


async def run_unary_async(
    client: herald.AsyncClient, topic: str, data: bytes, duration: float
) -> Stats:
    await client.publish(topic, data)  # opens the channel before the clock starts
    stats = Stats()
    deadline = stats.start + int(duration * 1e9)
    now = stats.start
    while now < deadline:
        try:
            await client.publish(topic, data)
        except herald.HeraldError:
            stats.errors += 1
            now = time.perf_counter_ns()
        else:
            end = time.perf_counter_ns()
            stats.ok(end - now)
            now = end
    stats.end = now
    return stats


#: In the stream modes, every SAMPLE-th message's publish-to-ack latency is recorded
#: (a callback on every message would cost more than the SDK's own work).
SAMPLE = 32


def run_stream(
    client: herald.Client, topic: str, data: bytes, duration: float, window: int
) -> Stats:
    client.publish(topic, data)  # opens the channel before the clock starts
    stats = Stats()
    latencies: list[int] = []
    perf = time.perf_counter_ns

    def sample(sent_ns: int) -> Callable[[concurrent.futures.Future[herald.PublishResult]], None]:
        return lambda _: latencies.append(perf() - sent_ns)

    # Answers come in publish order: tally the answered ones from the front as we go,
    # so that only the window's futures are alive at any time.
    pending: collections.deque[concurrent.futures.Future[herald.PublishResult]]
    pending = collections.deque()
    deadline = stats.start + int(duration * 1e9)
    with client.publisher(max_in_flight=window) as pub:
        publish, keep = pub.publish, pending.append
        while perf() < deadline:
            sampled = publish(topic, data)
            sampled.add_done_callback(sample(perf()))
            keep(sampled)
            for _ in range(SAMPLE - 1):
                keep(publish(topic, data))
            while pending and pending[0].done():
                stats.tally(pending.popleft())
    stats.end = perf()  # leaving the block waited for the last answer
    while pending:
        stats.tally(pending.popleft())
    stats.latencies = latencies
    return stats


async def run_stream_async(
    client: herald.AsyncClient, topic: str, data: bytes, duration: float, window: int
) -> Stats:
    await client.publish(topic, data)
    stats = Stats()
    latencies: list[int] = []
    perf = time.perf_counter_ns

    def sample(sent_ns: int) -> Callable[[asyncio.Future[herald.PublishResult]], None]:
        return lambda _: latencies.append(perf() - sent_ns)

    pending: collections.deque[asyncio.Future[herald.PublishResult]] = collections.deque()
    deadline = stats.start + int(duration * 1e9)
    async with client.publisher(max_in_flight=window) as pub:
        publish, keep = pub.publish, pending.append
        while perf() < deadline:
            sampled = await publish(topic, data)
            sampled.add_done_callback(sample(perf()))
            keep(sampled)
            for _ in range(SAMPLE - 1):
                keep(await publish(topic, data))
            while pending and pending[0].done():
                stats.tally(pending.popleft())
    stats.end = perf()
    while pending:
        stats.tally(pending.popleft())
    stats.latencies = latencies
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="the engine's gRPC address, host:port")
    parser.add_argument("--mode", required=True, choices=MODES)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of publishing")
    parser.add_argument("--topic", default="bench:sdk-python")
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument(
        "--window", type=int, default=4096, help="stream modes: messages waiting for an ack at most"
    )
    args = parser.parse_args()
    if args.duration <= 0 or args.payload_bytes < 0 or args.window < 1:
        parser.error("--duration must be > 0, --payload-bytes >= 0, --window >= 1")
    data = b"x" * args.payload_bytes

    try:
        if args.mode == "unary":
            with herald.Client(args.addr) as client:
                stats = run_unary(client, args.topic, data, args.duration)
        elif args.mode == "stream":
            with herald.Client(args.addr) as client:
                stats = run_stream(client, args.topic, data, args.duration, args.window)
        else:

            async def run_async() -> Stats:
                async with herald.AsyncClient(args.addr) as client:
                    if args.mode == "unary-async":
                        return await run_unary_async(client, args.topic, data, args.duration)
                    return await run_stream_async(
                        client, args.topic, data, args.duration, args.window
                    )

            stats = asyncio.run(run_async())
    except herald.HeraldError as e:
        print(f"driver: {e}", file=sys.stderr)
        return 1
    print(stats.line(args.mode), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
