#!/usr/bin/env python3
"""A small Herald producer: publishes price ticks to a topic.

Start an engine (``cargo build --release -p herald && target/release/herald``),
install the SDK (``pip install ./sdk-python``), open a WebSocket client on
``ws://127.0.0.1:8080/ws`` that subscribes to ``prices:EUR-USD``, then run::

    python examples/python/producer.py --topic prices:EUR-USD --count 20

Every tick is a JSON object, so the WebSocket client receives it as a JSON value
in the ``data`` field. Ticks carry a TTL: a slow client drops stale ones instead
of receiving them late. ``--stream`` sends them over one PublishStream instead of
one Publish call each.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import herald


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="engine gRPC address")
    parser.add_argument("--topic", default="prices:EUR-USD")
    parser.add_argument("--count", type=int, default=10, help="ticks to publish")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between ticks")
    parser.add_argument("--api-key", default=None, help="sent as authorization: Bearer KEY")
    parser.add_argument("--stream", action="store_true", help="use one PublishStream")
    args = parser.parse_args()

    price = 1.0800
    with herald.Client(args.target, api_key=args.api_key) as client:
        try:
            if client.health() != herald.HealthStatus.SERVING:
                print("engine is not serving yet", file=sys.stderr)
                return 1
        except herald.Unavailable as e:
            print(f"cannot reach the engine at {args.target}: {e.message}", file=sys.stderr)
            return 1

        def tick(i: int) -> dict[str, object]:
            nonlocal price
            price = round(price + random.uniform(-0.0005, 0.0005), 5)
            return {"pair": args.topic.split(":")[-1], "bid": price, "n": i, "ts": time.time()}

        if args.stream:
            with client.publisher() as pub:
                futures = []
                for i in range(args.count):
                    futures.append(pub.publish(args.topic, tick(i), ttl=2.0))
                    time.sleep(args.interval)
            for f in futures:
                print(f"{args.topic} seq={f.result().sequence}")
        else:
            for i in range(args.count):
                result = client.publish(args.topic, tick(i), ttl=2.0)
                print(f"{args.topic} seq={result.sequence}")
                time.sleep(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
