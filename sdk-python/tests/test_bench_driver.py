"""bench/sdk/python/driver.py (the Python side of the `sdk` benchmark scenario) runs in
every mode against a real engine and prints the one JSON line the scenario reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, Engine

DRIVER = REPO_ROOT / "bench" / "sdk" / "python" / "driver.py"
KEYS = ["sdk", "mode", "messages", "seconds", "per_s", "p50_us", "p99_us", "errors"]


@pytest.mark.parametrize("mode", ["unary", "unary-async", "stream", "stream-async"])
def test_driver_prints_one_json_line(engine: Engine, topic: str, mode: str) -> None:
    out = subprocess.run(
        [sys.executable, str(DRIVER), "--addr", engine.target, "--mode", mode,
         "--duration", "0.5", "--topic", topic, "--payload-bytes", "32"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert len(lines) == 1, out.stdout
    result = json.loads(lines[0])
    assert list(result) == KEYS
    assert (result["sdk"], result["mode"], result["errors"]) == ("python", mode, 0)
    assert result["messages"] > 0 and result["seconds"] >= 0.5
    assert result["per_s"] == pytest.approx(result["messages"] / result["seconds"], rel=0.01)
    assert 0 < result["p50_us"] <= result["p99_us"]


def test_driver_reports_an_unreachable_engine() -> None:
    out = subprocess.run(
        [sys.executable, str(DRIVER), "--addr", "127.0.0.1:1", "--mode", "unary",
         "--duration", "0.2"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1 and out.stdout == ""
    assert "driver:" in out.stderr
