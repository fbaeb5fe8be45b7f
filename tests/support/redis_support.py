"""A real ``redis-server`` for the cluster tests, on a free loopback port, no persistence.

Redis cannot listen on port 0 and report it, so a free port is found by binding a socket to
port 0 first; if redis-server then fails to bind it (another process took it meanwhile), a
new port is tried, a bounded number of times.  Without ``redis-server`` on PATH the tests are
skipped with the reason (``scripts/install-redis`` installs it; ``scripts/test`` runs that).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from waiting import wait_until

__all__ = ["RedisServer", "redis_server", "redis_server_path"]


def redis_server_path() -> str:
    """The path of ``redis-server``, or a skip saying how to get it."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip(
            "redis-server is not on PATH: run scripts/install-redis (installs the Debian "
            "package redis-server); scripts/test does"
        )
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process; :meth:`stop` and :meth:`start` keep the same port."""

    def __init__(self, path: str, log: Path) -> None:
        self.path = path
        self.log = log
        self.port = 0
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start on :attr:`port` (or a new free port the first time), ready for commands."""
        for _ in range(5):
            port = self.port or _free_port()
            argv = [self.path, "--port", str(port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no"]
            with self.log.open("ab") as out:
                process = await trio.lowlevel.open_process(
                    argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            if await _answers(port, process):
                self.port, self.process = port, process
                return
            process.kill()
            await process.wait()
            if self.port:
                break  # a restart must keep its port
        raise RuntimeError(f"redis-server did not start; see {self.log}")

    async def stop(self) -> None:
        """Kill the server (as a crash or a partition would look to the replicas)."""
        if self.process is not None:
            self.process.kill()
            await self.process.wait()
            self.process = None

    async def command(self, *args: str) -> bytes:
        """One command over a raw socket (RESP, arguments as given); the first reply line."""
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            await stream.send_all(b"".join(parts))
            return (await stream.receive_some(65536)).split(b"\r\n")[0]


async def _answers(port: int, process: trio.Process) -> bool:
    """Whether the server answers PING; False if it exited first (its port was taken)."""

    async def pong_or_exit() -> str | None:
        if process.poll() is not None:
            return "exited"
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"PING\r\n")
            return "pong" if (await stream.receive_some(64)).startswith(b"+PONG") else None

    what = f"redis-server to answer PING on port {port}"
    return await wait_until(pong_or_exit, what=what, step=0.02, ignore=(OSError,)) == "pong"


@asynccontextmanager
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A started redis-server, killed afterwards."""
    server = RedisServer(redis_server_path(), tmp_path / "redis.log")
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()
