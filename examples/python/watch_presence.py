#!/usr/bin/env python3
"""Keeps a live view of who is in a set of topics, with the asyncio client.

::

    python examples/python/watch_presence.py 'room:>'

It prints the members from the snapshot, then every join and leave. When the
stream drops (try restarting the engine) or the engine says the watcher fell
behind, the SDK yields a RESYNC event: the view is dropped and rebuilt from the
snapshot that follows, so it is never silently wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import herald
from herald import PresenceEventKind as Kind


async def watch(target: str, patterns: list[str]) -> None:
    view: dict[tuple[str, str], herald.Member] = {}
    async with herald.AsyncClient(target) as client:
        async with client.watch_presence(patterns, include_snapshot=True) as events:
            async for ev in events:
                if ev.kind == Kind.RESYNC:
                    why = "stream reopened" if ev.local else "watcher fell behind"
                    print(f"-- resync ({why}): dropping {len(view)} members")
                    view.clear()
                elif ev.kind == Kind.SNAPSHOT_END:
                    print(f"-- snapshot complete: {len(view)} members")
                elif ev.kind in (Kind.SNAPSHOT, Kind.JOIN) and ev.member:
                    view[(ev.topic, ev.member.connection_id)] = ev.member
                    print(f"{ev.kind.name.lower():>8} {ev.topic} {ev.member.user_id or '-'}")
                elif ev.kind == Kind.LEAVE and ev.member:
                    view.pop((ev.topic, ev.member.connection_id), None)
                    print(f"{'leave':>8} {ev.topic} {ev.member.user_id or '-'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="+", help="topics or patterns: room:general, room:*")
    parser.add_argument("--target", default="127.0.0.1:50051", help="engine gRPC address")
    args = parser.parse_args()
    try:
        asyncio.run(watch(args.target, args.patterns))
    except KeyboardInterrupt:
        return 0
    except herald.HeraldError as e:
        print(f"watch ended: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
