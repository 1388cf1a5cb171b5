"""herald.tokens against a real engine that authenticates its clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from conftest import Engine, EngineFactory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from wsclient import WsClient

import herald
from herald.tokens import mint_token

SECRET = "python-test-secret-not-for-production-" + "x" * 32

RULES = """
[[topics]]
pattern = "user:*"
subscribe = "owner"

[[topics]]
pattern = "room:>"
subscribe = "granted"
"""


@pytest.fixture
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def auth_engine(
    new_engine: EngineFactory, tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> Iterator[Engine]:
    public = tmp_path / "ec-public.pem"
    public.write_bytes(
        ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = tmp_path / "herald.toml"
    config.write_text(RULES)
    eng = new_engine(
        "--config",
        str(config),
        "--token-hmac-secret",
        SECRET,
        "--token-public-key",
        str(public),
    )
    eng.start()
    yield eng


def url(engine: Engine, token: str) -> str:
    return f"ws://127.0.0.1:{engine.ws_port}/ws?token={token}"


def test_a_minted_token_connects_subscribes_and_is_refused_other_users_topics(
    auth_engine: Engine,
) -> None:
    with herald.Client(auth_engine.target) as client:
        assert client.info().client_auth is True
        token = mint_token(
            SECRET,
            sub="py",
            ttl=60,
            topics=["room:team:*"],
            subscribe=["user:py"],
            info={"name": "Py"},
        )
        ws = WsClient(url(auth_engine, token))
        announced = ws.recv()
        assert announced == {"type": "subscribed", "topics": ["user:py"], "server": True}
        client.publish("user:py", {"n": 1})
        assert ws.next("message")["data"] == {"n": 1}
        ws.subscribe("room:team:1")
        ws.ws.send(json.dumps({"type": "subscribe", "id": 99, "topics": ["user:other"]}))
        while True:
            frame = ws.recv()
            if frame.get("id") == 99:
                break
        assert frame["type"] == "error"
        assert frame["code"] == "forbidden"
        assert "user:other" in frame["message"]
        members = client.presence("user:py")
        assert [(m.user_id, json.loads(m.info)) for m in members] == [("py", {"name": "Py"})]


def test_es256_tokens_from_a_pem_key(
    auth_engine: Engine, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = mint_token(pem, sub="es", algorithm="ES256")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    WsClient(url(auth_engine, token))


def test_refused_tokens_get_a_401(auth_engine: Engine) -> None:
    for token, code in [
        (mint_token("another secret of at least 32 bytes", sub="x"), "token_bad_signature"),
        (mint_token(SECRET, sub="x", algorithm="HS512"), "token_wrong_algorithm"),
        (mint_token(SECRET, sub="x", ttl=None), "token_invalid_claims"),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            connect(url(auth_engine, token), open_timeout=5)
        assert refused.value.response.status_code == 401
        assert refused.value.response.body.decode().startswith(code), code


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, sub="")
    with pytest.raises(ValueError):
        mint_token(SECRET, sub="a", ttl=0)
    with pytest.raises(ValueError):
        mint_token("", sub="a")


def test_an_open_engine_says_so(engine: Engine) -> None:
    with herald.Client(engine.target) as client:
        assert client.info().client_auth is False
