"""Connection tokens for WebSocket clients, minted by the backend.

A Herald engine started with a token key (``--token-hmac-secret``,
``--token-public-key`` or ``--token-jwks-file``) accepts a WebSocket client only
with a JWT signed by that key (docs/protocol.md, "Authentication")::

    from herald.tokens import mint_token

    token = mint_token("the-shared-secret", sub="42", ttl=600, subscribe=["user:42"])

The client passes it as ``?token=`` in the WebSocket URL or in its first frame,
``{"type":"connect","token":"..."}``.

This module needs PyJWT (with ``cryptography`` for RS/PS/ES/EdDSA keys): install
``herald-sdk[tokens]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["mint_token"]

_HMAC = ("HS256", "HS384", "HS512")


def mint_token(
    secret_or_key: str | bytes,
    *,
    sub: str,
    ttl: float | None = 3600,
    topics: Iterable[str] | None = None,
    subscribe: Iterable[str] | None = None,
    info: Any = None,
    algorithm: str = "HS256",
    audience: str | None = None,
    issuer: str | None = None,
    key_id: str | None = None,
    not_before: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Signs a connection token.

    Args:
        secret_or_key: the HMAC secret (for HS256/384/512) or a private key in PEM
            (for RS*, PS*, ES256/384 and EdDSA) matching a key the engine verifies with.
        sub: the connection's user id.
        ttl: seconds until ``exp``; ``None`` mints a token without ``exp`` (accepted
            only by an engine started with ``--token-allow-no-exp``).
        topics: topics or patterns (``room:*``) the client may subscribe to where a
            topic rule says ``granted``.
        subscribe: topics the engine subscribes the connection to when it connects.
        info: JSON-serialisable client info, shown to producers through presence.
        algorithm: the JWT algorithm; it must be the one the engine's key is pinned to.
        audience: ``aud``, for an engine started with ``--token-audience``.
        issuer: ``iss``, for an engine started with ``--token-issuer``.
        key_id: ``kid`` header, selecting a key of the engine's JWKS file.
        not_before: seconds from now until the token becomes valid (``nbf``).
        extra: more claims, merged last.

    Returns:
        The compact JWT.

    Raises:
        ValueError: an empty ``sub``, a negative ``ttl`` or an HMAC algorithm without a
            secret.
        ImportError: PyJWT is not installed.
    """
    try:
        import jwt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("herald.tokens needs PyJWT: pip install 'herald-sdk[tokens]'") from e
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl is not None and ttl <= 0:
        raise ValueError("ttl must be positive (or None for a token without exp)")
    if algorithm in _HMAC and not secret_or_key:
        raise ValueError("an HMAC algorithm needs a non-empty secret")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "jti": uuid.uuid4().hex}
    if ttl is not None:
        claims["exp"] = now + int(ttl)
    if not_before is not None:
        claims["nbf"] = now + int(not_before)
    if topics is not None:
        claims["topics"] = list(topics)
    if subscribe is not None:
        claims["subscribe"] = list(subscribe)
    if info is not None:
        claims["info"] = info
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    if extra:
        claims.update(extra)
    headers = {"kid": key_id} if key_id is not None else None
    token: str = jwt.encode(claims, secret_or_key, algorithm=algorithm, headers=headers)
    return token
