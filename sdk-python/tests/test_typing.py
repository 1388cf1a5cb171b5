"""Static checks of the SDK's signatures, enforced by ``mypy --strict`` over the tests.

Each call below is wrong and carries ``# type: ignore[<code>]``. ``--strict`` turns on
``warn_unused_ignores``, so should one of these calls type-check, its ignore becomes
unused and mypy fails: every line proves that mypy rejects the call. (The calls are
never run; the ValueError raised at run time is tested in test_control.py.)
"""

from __future__ import annotations

import herald


def _exactly_one_target(
    client: herald.Client,
    aclient: herald.AsyncClient,
    ctl: herald.ControlStream,
    actl: herald.AsyncControlStream,
) -> None:
    client.subscribe("t", connection_id="c", user_id="u")  # type: ignore[call-overload]
    client.subscribe("t")  # type: ignore[call-overload]
    client.unsubscribe("t", connection_id="c", user_id="u")  # type: ignore[call-overload]
    client.unsubscribe(["t"])  # type: ignore[call-overload]
    client.disconnect(connection_id="c", user_id="u")  # type: ignore[call-overload]
    client.disconnect(reason="r")  # type: ignore[call-overload]
    aclient.subscribe("t", connection_id="c", user_id="u")  # type: ignore[call-overload]
    aclient.unsubscribe("t")  # type: ignore[call-overload]
    aclient.disconnect()  # type: ignore[call-overload]
    ctl.subscribe("t", connection_id="c", user_id="u")  # type: ignore[call-overload]
    ctl.unsubscribe("t")  # type: ignore[call-overload]
    ctl.disconnect()  # type: ignore[call-overload]
    actl.subscribe("t")  # type: ignore[call-overload]
    actl.unsubscribe("t", connection_id="c", user_id="u")  # type: ignore[call-overload]
    actl.disconnect(user_id="u", connection_id="c")  # type: ignore[call-overload]


def _precise_types(client: herald.Client, err: herald.HeraldError) -> None:
    # err.code is a grpc.StatusCode (with types-grpcio installed), not Any
    err.code.upper()  # type: ignore[attr-defined]
    client.health().startswith("S")  # type: ignore[attr-defined]


def test_the_checks_above_are_type_checked_not_run() -> None:
    assert callable(_exactly_one_target) and callable(_precise_types)
