"""How Python values become a payload and a content type.

=========================  ================================  ====================================
value                      content type sent                 what a WebSocket client receives
=========================  ================================  ====================================
``bytes`` / ``bytearray``  empty (application/octet-stream)  ``b64``: base64 of the bytes
``str``                    ``text/plain; charset=utf-8``     ``text``: the string
anything else              ``application/json``              ``data``: the JSON value
=========================  ================================  ====================================

"Anything else" must be JSON-serialisable (dicts, lists, numbers, booleans, None, ...).
An explicit ``content_type`` overrides the choice for ``bytes`` and ``str`` values.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TypeAlias

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"

#: What ``publish``/``broadcast`` accept as data: bytes, str, or any value that
#: ``json.dumps`` accepts (checked when the message is built).
Payload: TypeAlias = object
#: A time to live: seconds as a number, or a ``timedelta``.
TTL: TypeAlias = "float | timedelta"

_MAX_TTL_MS = 2**32 - 1


def encode(data: Payload, content_type: str | None = None) -> tuple[bytes, str]:
    """Encode ``data`` and return ``(payload bytes, content type)``."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data), content_type if content_type is not None else ""
    if isinstance(data, str):
        return data.encode("utf-8"), content_type if content_type is not None else TEXT_CONTENT_TYPE
    if content_type is not None and not _is_json_type(content_type):
        raise TypeError(
            f"content_type {content_type!r} needs bytes or str data, not {type(data).__name__}"
        )
    try:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"payload of type {type(data).__name__} is not JSON-serialisable: {e}"
        ) from e
    return text.encode("utf-8"), content_type if content_type is not None else JSON_CONTENT_TYPE


def ttl_ms(ttl: TTL | None) -> int | None:
    """Convert a TTL to whole milliseconds for the wire (None stays None)."""
    if ttl is None:
        return None
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    ms = round(seconds * 1000)
    if ms <= 0 or ms > _MAX_TTL_MS:
        raise ValueError(f"ttl must be between 1 ms and {_MAX_TTL_MS} ms, got {ttl!r}")
    return ms


def _is_json_type(content_type: str) -> bool:
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == "application/json" or essence.endswith("+json")
