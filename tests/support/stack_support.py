"""Configurations for tests that run the whole LB (in process or as `tunnel-lb run`).

Two shapes: two tunnels in two pools (eu, us) reached through ``connect_to``, and one pool of
one tunnel that is never probed successfully (for reload and supervision tests).
:func:`running_stack` starts the first shape as real processes: a ``tunnel-lb connector`` per
tunnel and ``tunnel-lb run`` in front.

Every process started here binds port 0 and the test reads the port it got from what the
process says once it listens (:func:`start_connector_process`, :func:`start_lb_process`):
a port picked by the test and handed over could be taken by another process (a second copy
of the suite) before the child binds it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trustme
from ports_support import dead_port
from waiting import wait_until

__all__ = [
    "APP",
    "EU",
    "LB",
    "US",
    "Ready",
    "Stack",
    "connector_config",
    "log_size",
    "logged",
    "one_pool_config",
    "processes",
    "running_stack",
    "start_connector_process",
    "start_lb_process",
    "start_process",
    "two_tunnel_config",
    "until_url",
]

EU = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
US = "0f3e2d1c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
APP = "app.example.com"
"""The Host the tunnels' ingress routes (and the monitor and endpoints send)."""
LB = "app.localhost"


def two_tunnel_config(
    ports: dict[str, int],
    ca: Path,
    *,
    order: Sequence[str] = ("eu", "us"),
    names: Sequence[str] = (LB,),
    **engine: Any,
) -> str:
    """Pools eu and us, one tunnel each, monitored every second; ``order`` is the failover
    order of every load balancer in ``names``.  ``engine`` adds or overrides engine fields.
    The proxy and the admin listen on port 0: :func:`start_lb_process` reads what they got."""
    return json.dumps(
        {
            "monitors": [
                {
                    "id": "app",
                    "type": "https",
                    "path": "/healthz",
                    "interval": 1,
                    # A check that is only slow (a loaded CI machine) gets a second chance;
                    # a refused one fails at once, so detecting a dead tunnel stays as quick.
                    "timeout": 2,
                    "retries": 1,
                    "header": {"Host": [APP]},
                }
            ],
            "pools": [
                {
                    "name": name,
                    "monitor": "app",
                    "origins": [
                        {
                            "name": f"tunnel-{name}",
                            "address": f"{uuid}.cfargotunnel.com",
                            "header": {"Host": [APP]},
                        }
                    ],
                }
                for name, uuid in (("eu", EU), ("us", US))
            ],
            "load_balancers": [
                {
                    "name": name,
                    "proxied": True,
                    "default_pools": list(order),
                    "fallback_pool": "us",
                    # One tunnel per pool: without this the retry has no alternate (R43).
                    "adaptive_routing": {"failover_across_pools": True},
                }
                for name in names
            ],
            "connect_to": {
                f"{uuid}.cfargotunnel.com:443": f"127.0.0.1:{ports[uuid]}" for uuid in (EU, US)
            },
            "engine": {
                "minimum_interval": 1,
                "listen": [{"address": "127.0.0.1", "port": 0}],
                "admin": "127.0.0.1:0",
                "upstream_ca": str(ca),
                "drain_timeout": 2,
                **engine,
            },
        },
        indent=1,
    )


def one_pool_config(*, interval: int = 10, listen: Sequence[int] = (0,), **engine: Any) -> str:
    """One pool of one tunnel whose ``connect_to`` is a dead port: probes fail."""
    return json.dumps(
        {
            "monitors": [{"id": "m", "type": "https", "path": "/h", "interval": interval}],
            "pools": [
                {
                    "name": "eu",
                    "monitor": "m",
                    "origins": [{"name": "t", "address": f"{EU}.cfargotunnel.com"}],
                }
            ],
            "load_balancers": [
                {"name": LB, "proxied": True, "default_pools": ["eu"], "fallback_pool": "eu"}
            ],
            "connect_to": {f"{EU}.cfargotunnel.com:443": f"127.0.0.1:{dead_port()}"},
            "engine": {
                "listen": [{"address": "127.0.0.1", "port": port} for port in listen],
                "admin": "127.0.0.1:0",
                "drain_timeout": 1,
                **engine,
            },
        }
    )


def connector_config(uuid: str, dc: str, port: int, cert: Path) -> str:
    """A ``tunnel-lb connector`` file: the tunnel ``uuid`` on ``port``, routing :data:`APP`."""
    return json.dumps(
        {
            "tunnel": uuid,
            "replica": f"{dc.lower()}-1",
            "datacenter": dc,
            "listen": f"127.0.0.1:{port}",
            "certificate": str(cert),
            "key": str(cert),
            "ingress": [
                {"hostname": APP, "path": "^/healthz$", "service": "http_status:200"},
                {"hostname": APP, "service": "hello_world"},
                {"service": "http_status:404"},
            ],
        }
    )


async def until_url(client: httpx.AsyncClient, url: str, ok: Any, *, seconds: float = 20) -> Any:
    """Poll ``url`` until ``ok(response)`` is truthy (bounded); return that value.

    Another process's state: there is no event to wait on, so it goes through
    :func:`waiting.wait_until`."""

    async def check() -> Any:
        return ok(await client.get(url))

    what = f"{url} to reach the expected state"
    return await wait_until(check, seconds, what=what, step=0.1, ignore=(httpx.TransportError,))


@asynccontextmanager
async def processes() -> AsyncIterator[trio.Nursery]:
    """A nursery for processes, cancelled (so every process is stopped) on the way out."""
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        finally:
            nursery.cancel_scope.cancel()


async def start_process(nursery: trio.Nursery, *args: str, log: Path) -> trio.Process:
    """``python -m lb ARGS...`` in ``nursery``, its output appended to ``log``."""
    with log.open("ab") as out:
        cmd = [sys.executable, "-m", "lb", *args]
        run = partial(trio.run_process, cmd, check=False, stdout=out, stderr=out)
        process: trio.Process = await nursery.start(run)
        return process


def tunnel_certs(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for :data:`APP` with its key (``tunnel.pem``, what the tunnels serve)
    and the CA that signed it (``ca.pem``, what ``upstream_ca`` trusts), in ``tmp_path``."""
    ca = trustme.CA()
    cert = tmp_path / "tunnel.pem"
    ca.issue_cert(APP).private_key_and_cert_chain_pem.write_to_path(str(cert))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return cert, ca_file


def log_size(log: Path) -> int:
    """Where ``log`` ends now: what a process started after this writes comes later."""
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def _whole_lines(log: Path, since: int) -> list[str]:
    """The complete lines of ``log`` after byte ``since`` (a line still being written, with
    no newline yet, is left out: ``...:4`` may be the start of ``...:43512``)."""
    with log.open("rb") as f:
        f.seek(since)
        data = f.read()
    return data.decode(errors="replace").split("\n")[:-1]


async def logged(
    log: Path,
    since: int,
    found: Callable[[str], Any],
    process: trio.Process,
    what: str,
    seconds: float = 30,
) -> Any:
    """The first truthy value ``found(line)`` gives, over the lines ``process`` wrote to
    ``log`` after byte ``since``; waited for (bounded).  A process that exits without writing
    such a line fails the test at once, with the end of the log."""

    def check() -> Any:
        exited = process.poll() is not None  # before the read: its last lines are in it
        for line in _whole_lines(log, since):
            value = found(line)
            if value:
                return value
        if exited:
            with log.open("rb") as f:
                f.seek(since)
                tail = f.read().decode(errors="replace")[-3000:]
            pytest.fail(
                f"{what}: the process exited ({process.returncode}) first\n--- log ---\n{tail}",
                pytrace=False,
            )
        return None

    return await wait_until(check, seconds, what=what, step=0.02)


def event_of(line: str, name: str) -> dict[str, Any] | None:
    """The JSON log event ``name`` on ``line``, or None (another event, or not JSON)."""
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and obj.get("event") == name else None


def log_events(log: Path, name: str) -> list[dict[str, Any]]:
    """Every JSON log event ``name`` in ``log`` so far."""
    lines = log.read_text(errors="replace").splitlines()
    return [e for e in (event_of(line, name) for line in lines) if e is not None]


def _port(address: str) -> int:
    """The port of ``host:port`` (``[v6]:port`` too)."""
    return int(address.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Ready:
    """The ports ``tunnel-lb run`` says it bound, from its ``ready`` log line."""

    listen: list[int]
    admin: int


async def start_lb_process(
    nursery: trio.Nursery, config: Path, *args: str, log: Path
) -> tuple[trio.Process, Ready]:
    """``tunnel-lb run CONFIG ARGS...`` (JSON logs, the default) once it has logged ``ready``,
    and the ports it bound: its file asks for port 0 (``listen`` and ``admin``)."""
    since = log_size(log)
    process = await start_process(nursery, "run", str(config), *args, log=log)
    ready = await logged(
        log, since, lambda line: event_of(line, "ready"), process, "tunnel-lb run's ready line"
    )
    return process, Ready([_port(a) for a in ready["proxy"]], _port(ready["admin"]))


async def start_connector_process(
    nursery: trio.Nursery, config: Path, tunnel: str, *, log: Path
) -> tuple[trio.Process, int]:
    """``tunnel-lb connector --quiet CONFIG`` (of ``tunnel``, listening on port 0) once it
    has printed its HTTPS URL, and the port in it (docs/connector.md, "Running it")."""
    since = log_size(log)
    process = await start_process(nursery, "connector", "--quiet", str(config), log=log)
    said = re.compile(rf"tunnel {re.escape(tunnel)} replica \S+: https://127\.0\.0\.1:(\d+)")

    def port(line: str) -> int | None:
        match = said.fullmatch(line)
        return int(match[1]) if match else None

    bound: int = await logged(log, since, port, process, f"connector {tunnel}'s URL")
    return process, bound


@dataclass
class Stack:
    """A running two-tunnel stack: where to send traffic, the admin, and the processes; with
    the ports and the CA file a test needs to write another :func:`two_tunnel_config`."""

    base: str
    admin: int
    """The admin port ``tunnel-lb run`` bound (its file says port 0)."""
    admin_base: str
    tunnels: dict[str, trio.Process]
    lb: trio.Process
    config: Path
    log: Path
    ports: dict[str, int]
    """The tunnels' ports, by tunnel UUID."""
    listen: int
    """The proxy port ``tunnel-lb run`` bound (its file says port 0)."""
    ca_file: Path
    engine: dict[str, Any]
    """The engine fields :func:`running_stack` was given."""

    def reconfigured(self, **changes: Any) -> str:
        """This stack's :func:`two_tunnel_config` with ``changes`` (``order``, ``names`` or
        engine fields), for a reload.  Its listeners stay at port 0, as at the start: a
        reload does not rebind them, and an unchanged ``listen`` is no warning."""
        options = {**self.engine, **changes}
        return two_tunnel_config(self.ports, self.ca_file, **options)


@asynccontextmanager
async def running_stack(tmp_path: Path, **engine: Any) -> AsyncIterator[Stack]:
    """Two connector processes (eu in FRA, us in IAD) and ``tunnel-lb run`` over them, ready
    (``/readyz`` answered 200); every process is stopped on exit.  Each binds port 0 and says
    which port it got; the LB's file is written once the connectors have said theirs."""
    cert, ca_file = tunnel_certs(tmp_path)
    config = tmp_path / "lb.json"
    log = tmp_path / "processes.log"
    async with processes() as nursery, httpx.AsyncClient(timeout=5) as client:
        tunnels, ports = {}, {}
        for uuid, dc in ((EU, "FRA"), (US, "IAD")):
            path = tmp_path / f"{dc}.json"
            path.write_text(connector_config(uuid, dc, 0, cert))
            tunnels[uuid], ports[uuid] = await start_connector_process(nursery, path, uuid, log=log)
        config.write_text(two_tunnel_config(ports, ca_file, **engine))
        lb, ready = await start_lb_process(nursery, config, log=log)
        [listen] = ready.listen
        admin_base = f"http://127.0.0.1:{ready.admin}"
        await until_url(client, f"{admin_base}/readyz", lambda r: r.status_code == 200)
        yield Stack(
            base=f"http://127.0.0.1:{listen}",
            admin=ready.admin,
            admin_base=admin_base,
            tunnels=tunnels,
            lb=lb,
            config=config,
            log=log,
            ports=ports,
            listen=listen,
            ca_file=ca_file,
            engine=engine,
        )
