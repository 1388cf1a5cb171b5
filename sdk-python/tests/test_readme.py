"""Every ```python block of the READMEs is type-checked and run against a real engine,
so that the documentation cannot drift from the SDK.

Conventions (stated in the README's "Calls" section):

- The block that defines ``cid = "..."`` names what the other blocks use
  (``client``, ``aclient``, ``cid``); it is put in front of every block, with
  ``cid`` set to a real connection's id.
- ``127.0.0.1:50051`` stands for the engine's address and is replaced by the test
  engine's.
- A block with ``await`` / ``async for`` / ``async with`` at its top level is code
  inside an ``async def``: it is wrapped in one and run with ``asyncio.run``.
- Before each block, the users ``alice`` and ``mallory`` and the connection ``cid``
  are connected over WebSocket.

Each block must pass ``mypy --strict`` (for the oldest supported Python) and exit
with status 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO_ROOT, Engine
from wsclient import WsClient

SDK_ROOT = REPO_ROOT / "sdk-python"
DOCS = [SDK_ROOT / "README.md", REPO_ROOT / "examples" / "python" / "README.md"]
ADDRESS = "127.0.0.1:50051"
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
CID = re.compile(r'^cid = "[^"]*"', re.MULTILINE)
RUN_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO_ROOT)}:{self.line}"

    @property
    def module(self) -> str:
        stem = re.sub(r"\W", "_", self.path.parent.name + "_" + self.path.stem)
        return f"{stem}_{self.line}".lower()


def read_blocks() -> list[Block]:
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            blocks.append(Block(path, line, m.group(1)))
    return blocks


BLOCKS = read_blocks()


def names_block() -> Block:
    found = [b for b in BLOCKS if CID.search(b.code)]
    assert len(found) == 1, "exactly one README block must define `cid = ...`"
    return found[0]


def is_async_fragment(code: str) -> bool:
    try:
        compile(code, "<block>", "exec")
    except SyntaxError:
        return True  # top-level await / async for / async with
    return False


def program(block: Block, target: str, cid: str) -> str:
    """The block as a runnable module: the names, then the block (wrapped if async)."""
    names = CID.sub(f'cid = "{cid}"', names_block().code)
    code = block.code
    if is_async_fragment(code):
        code = (
            "async def _example() -> None:\n"
            + textwrap.indent(code, "    ")
            + "\n\nasyncio.run(_example())\n"
        )
    return (names + "\n\n" + code).replace(ADDRESS, target)


def test_the_readmes_have_blocks() -> None:
    assert len(BLOCKS) >= 15, [b.name for b in BLOCKS]
    # every block compiles as a module or as the body of an async function
    for block in BLOCKS:
        compile(program(block, ADDRESS, "c"), block.name, "exec")


def test_every_block_passes_mypy_strict(tmp_path: Path) -> None:
    files = []
    for block in BLOCKS:
        f = tmp_path / f"{block.module}.py"
        f.write_text(f"# {block.name}\n" + program(block, ADDRESS, "c"))
        files.append(str(f))
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10",
         "--cache-dir", str(SDK_ROOT / ".mypy_cache" / "readme"), *files],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MYPYPATH": str(SDK_ROOT / "src")},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_block_runs(block: Block, engine: Engine, tmp_path: Path) -> None:
    with ExitStack() as stack:
        for user in ("alice", "mallory"):
            stack.enter_context(WsClient(engine.ws_url(user=user)))
        conn = stack.enter_context(WsClient(engine.ws_url()))
        f = tmp_path / f"{block.module}.py"
        f.write_text(program(block, engine.target, conn.conn_id))
        out = subprocess.run(
            [sys.executable, str(f)], capture_output=True, text=True, timeout=RUN_TIMEOUT
        )
    assert out.returncode == 0, f"{block.name} failed:\n{block.code}\n{out.stderr}"
