"""A real ``redis-server`` for the cluster tests, on a unix socket, no persistence.

Redis cannot listen on TCP port 0 and report the port it got, and a TCP port picked first
could be taken by another process before redis-server binds it.  A unix socket in the
test's own directory cannot be taken: redis-server listens there only (``--port 0`` turns
TCP off), and the replicas reach it as ``unix://PATH`` (a URL ``cluster.redis`` accepts).
Without ``redis-server`` on PATH the tests are skipped with the reason
(``scripts/install-redis`` installs it; ``scripts/test`` runs that).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from waiting import wait_until

__all__ = ["RedisServer", "redis_server", "redis_server_path"]

SUN_PATH = 100
"""A unix socket's path must fit ``sun_path`` (108 bytes on Linux, with its NUL); a little
less, to be safe."""


def redis_server_path() -> str:
    """The path of ``redis-server``, or a skip saying how to get it."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip(
            "redis-server is not on PATH: run scripts/install-redis (installs the Debian "
            "package redis-server); scripts/test does"
        )
    return path


class RedisServer:
    """One redis-server process on the unix socket ``socket``; :meth:`stop` and
    :meth:`start` keep it (a restarted server is at the same address, as a real one is)."""

    def __init__(self, path: str, log: Path, socket: Path) -> None:
        self.path = path
        self.log = log
        self.socket = socket
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"

    async def start(self) -> None:
        """Start, ready for commands (it answers PING)."""
        argv = [self.path, "--port", "0", "--unixsocket", str(self.socket)]
        argv += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
        with self.log.open("ab") as out:
            process = await trio.lowlevel.open_process(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not await _answers(self.socket, process):
            process.kill()
            await process.wait()
            log = self.log.read_text(errors="replace")[-2000:]
            pytest.fail(f"redis-server exited before answering PING\n{log}", pytrace=False)
        self.process = process

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
        stream = await trio.open_unix_socket(str(self.socket))
        async with stream:
            await stream.send_all(b"".join(parts))
            return (await stream.receive_some(65536)).split(b"\r\n")[0]


async def _answers(socket: Path, process: trio.Process) -> bool:
    """Whether the server answers PING; False if it exited first."""

    async def pong_or_exit() -> str | None:
        if process.poll() is not None:
            return "exited"
        stream = await trio.open_unix_socket(str(socket))
        async with stream:
            await stream.send_all(b"PING\r\n")
            return "pong" if (await stream.receive_some(64)).startswith(b"+PONG") else None

    what = f"redis-server to answer PING on {socket}"
    return await wait_until(pong_or_exit, what=what, step=0.02, ignore=(OSError,)) == "pong"


@asynccontextmanager
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A started redis-server, killed afterwards.  Its socket is in ``tmp_path``, or in a
    directory of its own under the system's temporary directory when that path is too long
    for a unix socket."""
    socket = tmp_path / "redis.sock"
    short = None
    if len(str(socket).encode()) > SUN_PATH:
        short = Path(tempfile.mkdtemp(prefix="redis-"))
        socket = short / "redis.sock"
    server = RedisServer(redis_server_path(), tmp_path / "redis.log", socket)
    try:
        await server.start()
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
    finally:
        if short is not None:
            shutil.rmtree(short, ignore_errors=True)
