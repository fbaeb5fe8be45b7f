"""The live demo: a load balancer over two local tunnel stand-ins in two data centers.

``tunnel-lb demo`` (the README's first command) needs nothing running beforehand:

1. it makes a throw-away certificate authority (with ``trustme``) and a certificate for every
   Host the configuration sends to its tunnels;
2. it starts one ``tunnel-lb connector`` process per tunnel endpoint on a port the kernel
   picks, answering the monitor's path with 200 and everything else with ``hello_world``
   (which says which tunnel, replica and data center served), and points ``connect_to`` at
   it once it reports that it listens (a stand-in that cannot start stops the demo);
3. it runs the load balancer of ``configs/quickstart.yaml`` in this process, trusting that
   authority for probes and traffic, on the configured ports when they are free and on free
   ones when they are not (``--listen``/``--admin`` choose them);
4. it prints what to curl, where ``/metrics`` and ``/status`` are, and the process id to kill
   to watch failover.

A signal stops it cleanly at any moment (:mod:`lb.lifecycle`): the stand-ins are stopped
and the temporary directory, which holds their private key, is removed.

With ``--duration`` it also sends a few requests itself, prints where they went, and stops
after that many seconds: the demo's own smoke test.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import httpx
import trio

from lb import logs
from lb.config.hosts import LOOPBACK, split_host_port
from lb.config.model import Config, Listener
from lb.lifecycle import STOP_SIGNALS, host_port, receive_signals
from lb.service import Overrides, Running, serve_lb

__all__ = ["DEFAULT_CONFIG", "run_demo"]

_CHECKOUT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
_PACKAGED_CONFIG = Path(__file__).resolve().parent / "data" / "quickstart.yaml"
DEFAULT_CONFIG = _CHECKOUT_CONFIG if _CHECKOUT_CONFIG.is_file() else _PACKAGED_CONFIG
"""``configs/quickstart.yaml`` in a checkout; the copy shipped in the package after
``pip install "tunnel-lb[demo]"`` (a test keeps the two identical)."""


@dataclass(frozen=True, slots=True)
class _Tunnel:
    uuid: str
    name: str
    replica: str
    datacenter: str
    host: str
    listen: str
    health_path: str
    key: str
    """Its ``connect_to`` key (``<uuid>.cfargotunnel.com:443``)."""


def _tunnels(config: Config) -> list[_Tunnel]:
    """One stand-in per tunnel endpoint that ``connect_to`` maps to a local port."""
    out: dict[str, _Tunnel] = {}
    for pool in config.pools:
        monitors = config.pool_monitors(pool)
        monitor = monitors[0] if monitors else None
        for origin in pool.origins:
            uuid = origin.tunnel_id
            port = origin.port or 443
            key = f"{origin.address.lower()}:{port}"
            listen = config.connect_to.get(key)
            if uuid is None or listen is None or uuid in out:
                continue
            tunnel = config.tunnel(uuid)
            replica = tunnel.replicas[0] if tunnel and tunnel.replicas else None
            out[uuid] = _Tunnel(
                uuid=uuid,
                name=(tunnel.name if tunnel and tunnel.name else origin.name),
                replica=replica.name if replica else "replica-0",
                datacenter=replica.datacenters[0] if replica else "",
                host=origin.host_header or origin.address,
                listen=listen,
                health_path=monitor.path if monitor else "/",
                key=key,
            )
    return list(out.values())


def _write_connector(t: _Tunnel, directory: Path, cert: Path) -> Path:
    rules = [
        {"hostname": t.host, "path": f"^{t.health_path}$", "service": "http_status:200"},
        {"hostname": t.host, "service": "hello_world"},
        {"service": "http_status:404"},
    ]
    doc = {
        "tunnel": t.uuid,
        "replica": t.replica,
        "datacenter": t.datacenter,
        "listen": t.listen,
        "certificate": str(cert),
        "key": str(cert),
        "ingress": rules,
    }
    path = directory / f"connector-{t.name}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


def _banner(
    running: Running,
    tunnels: list[_Tunnel],
    pids: dict[str, int],
    connect_to: dict[str, str],
    taken: Sequence[str] = (),
) -> str:
    host, port = running.proxy[0]
    ahost, aport = running.admin
    lb = running.engine.config.load_balancers[0].name
    lines = [
        "",
        "tunnel-lb demo is running.",
        *([f"  ({', '.join(taken)} in use: it listens on free ports instead)"] if taken else []),
        f"  load balancer {lb} on http://{host}:{port}",
        f"    curl -s -H 'Host: {lb}' http://{host}:{port}/",
        f"  page     open http://{ahost}:{aport}/ in a browser (live status)",
        f"  status   curl -s http://{ahost}:{aport}/status",
        f"  metrics  curl -s http://{ahost}:{aport}/metrics",
        f"  explain  curl -s 'http://{ahost}:{aport}/explain?host={lb}'",
        "  tunnel stand-ins:",
    ]
    lines += [
        f"    {t.name} ({t.uuid}, {t.datacenter}) on {connect_to[t.key]}: pid {pids[t.uuid]}"
        for t in tunnels
    ]
    first = tunnels[0]
    lines += [
        f"  watch failover: kill {pids[first.uuid]}   # stops {first.name}",
        "    requests keep answering 200 (a request that cannot reach a tunnel is retried once",
        "    in the next pool: zero-downtime failover), and within",
        "    interval x consecutive_down + timeout /status shows the pool critical",
        f"  stop: Ctrl-C (or kill {os.getpid()})",
        "",
    ]
    return "\n".join(lines)


async def _self_test(running: Running, requests: int) -> collections.Counter[str]:
    """Send ``requests`` requests through the proxy; count who answered."""
    host, port = running.proxy[0]
    lb = running.engine.config.load_balancers[0].name
    seen: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5) as client:
        for _ in range(requests):
            response = await client.get("/", headers={"Host": lb})
            try:
                body = response.json()
                seen[f"{response.status_code} {body.get('tunnel')} ({body.get('datacenter')})"] += 1
            except ValueError:
                seen[f"{response.status_code}"] += 1
    return seen


async def run_demo(
    config_path: Path, *, duration: float | None = None, overrides: Overrides | None = None
) -> int:
    """Run the demo; see the module docstring.  Returns the process exit code.

    ``overrides`` (``--listen``/``--admin``) are used as given: a busy port is an error.
    Otherwise the demo keeps the configuration's ports when they are free and picks
    free ones when they are not.  The stand-ins always listen on ports the kernel picks.

    SIGTERM or SIGINT at any moment stops everything the demo started (the stand-ins and
    the temporary directory with the stand-ins' private key included) and returns 0; once
    the load balancer is up, the first signal drains it and a second one stops at once.
    """
    from lb.config.loader import load_config

    try:
        import trustme  # optional: only the demo makes certificates
    except ImportError:
        _say("error: the demo needs `trustme`: pip install 'tunnel-lb[demo]'", sys.stderr)
        return 1
    config = load_config([config_path]).config
    tunnels = _tunnels(config)
    if not tunnels:
        _say(f"error: {config_path}: no tunnel endpoint is mapped by connect_to", sys.stderr)
        return 2
    state = _State()
    async with trio.open_nursery() as control:
        state.background = control
        await control.start(receive_signals, state.on_signal)
        with state.scope:
            state.code = await _demo(
                config_path, config, tunnels, trustme, state, duration, overrides
            )
        control.cancel_scope.cancel()  # the signal receiver
    return state.code


@dataclass(slots=True)
class _State:
    """What a signal must know: whether the load balancer is up yet."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    running: Running | None = None
    code: int = 0
    background: trio.Nursery | None = None
    """Where a SIGHUP reload runs, so that a SIGTERM during it is handled at once."""

    def on_signal(self, signum: int) -> None:
        if signum not in STOP_SIGNALS:
            # SIGHUP: re-read the configuration (with the demo's ports) once the LB runs.
            if self.running is not None and self.background is not None:
                self.background.start_soon(self.running.reload)
            return
        if self.running is not None and not self.running.shutdown.is_set():
            logs.event("draining", signal=signal.Signals(signum).name)
            self.running.shutdown.set()  # drain; the LB's end then stops the stand-ins
        else:
            self.scope.cancel()  # not started yet, or a second signal: stop now


async def _demo(
    config_path: Path,
    config: Config,
    tunnels: list[_Tunnel],
    trustme: Any,
    state: _State,
    duration: float | None,
    overrides: Overrides | None,
) -> int:
    ca = trustme.CA()
    leaf = ca.issue_cert(*sorted({t.host for t in tunnels}))
    with tempfile.TemporaryDirectory(prefix="tunnel-lb-demo-") as tmp:
        directory = Path(tmp)
        cert = directory / "tunnel.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
        upstream = ssl.create_default_context()
        ca.configure_trust(upstream)
        async with trio.open_nursery() as nursery:
            started: dict[str, tuple[int, str] | None] = {}
            async with trio.open_nursery() as starting:  # all at once: Python starts slowly
                for t in tunnels:
                    path = _write_connector(t, directory, cert)
                    starting.start_soon(_start_stand_in, nursery, t, path, started)
            ready = {uuid: value for uuid, value in started.items() if value is not None}
            if len(ready) < len(tunnels):
                nursery.cancel_scope.cancel()
                return 1
            pids = {t.uuid: ready[t.uuid][0] for t in tunnels}
            connect_to = {t.key: ready[t.uuid][1] for t in tunnels}
            chosen, taken_listen, taken_admin = _free_defaults(config)
            if overrides is not None:  # as given, busy or not
                if overrides.listen:
                    chosen, taken_listen = replace(chosen, listen=overrides.listen), []
                if overrides.admin is not None:
                    chosen, taken_admin = replace(chosen, admin=overrides.admin), []
            taken = [*taken_listen, *taken_admin]
            chosen = replace(chosen, connect_to=connect_to)
            # Once the load balancer has stopped (a signal drained it, or --duration ran
            # out), cancel the nursery: that terminates the stand-in processes, which would
            # otherwise keep the demo running forever.
            running: Running = await nursery.start(
                _serve_then_cancel,
                nursery.cancel_scope,
                functools.partial(
                    serve_lb,
                    [str(config_path)],
                    config=chosen.apply(config),
                    upstream_ssl=upstream,
                    handle_signals=False,
                    overrides=chosen,
                ),
            )
            state.running = running
            _say(_banner(running, tunnels, pids, connect_to, taken))
            if duration is not None:
                with trio.move_on_after(duration):
                    await _wait_ready(running)
                    seen = await _self_test(running, 10)
                    _say(f"self-test, 10 requests: {dict(seen)}")
                    await trio.sleep_forever()
                running.shutdown.set()
    return 0


def _say(text: str, stream: TextIO | None = None) -> None:
    """Print and flush; a reader that went away is not an error of the demo."""
    with contextlib.suppress(BrokenPipeError):
        print(text, file=stream or sys.stdout, flush=True)


async def _start_stand_in(
    nursery: trio.Nursery, t: _Tunnel, path: Path, started: dict[str, tuple[int, str] | None]
) -> None:
    """Start one stand-in (in ``nursery``) on a free port; ``started[t.uuid]`` is its pid and
    ``host:port`` once it listens, or None (said on stderr) when it could not start."""
    started[t.uuid] = await _stand_in(nursery, t, path)


async def _stand_in(nursery: trio.Nursery, t: _Tunnel, path: Path) -> tuple[int, str] | None:
    host = t.listen.rpartition(":")[0] or "127.0.0.1"
    command = [
        sys.executable, "-m", "lb", "connector", "--quiet",
        "--listen", f"{host}:0", str(path),
    ]  # fmt: skip
    process: trio.Process = await nursery.start(
        functools.partial(trio.run_process, command, check=False, stdout=subprocess.PIPE)
    )
    assert process.stdout is not None
    lines = _lines(process.stdout)
    address = None
    with trio.move_on_after(STAND_IN_TIMEOUT):
        async for line in lines:
            url = line.rpartition(": ")[2].strip()
            if url.startswith("https://"):
                address = url.removeprefix("https://")
                break
        else:
            await process.wait()  # its stdout closed: it exited
    if address is None:
        why = (
            f"no port reported within {STAND_IN_TIMEOUT:g} s"
            if process.returncode is None
            else f"exit status {process.returncode}"
        )
        _say(f"error: tunnel stand-in {t.name} could not start ({why})", sys.stderr)
        return None
    nursery.start_soon(_drain, lines)
    return process.pid, address


STAND_IN_TIMEOUT = 15.0
"""Seconds a stand-in gets to report that it listens."""


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while chunk := await stream.receive_some(4096):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")


async def _drain(lines: AsyncIterator[str]) -> None:
    """Keep reading a stand-in's stdout so that it never blocks on a full pipe."""
    with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
        async for _ in lines:
            pass


def _free_defaults(config: Config) -> tuple[Overrides, list[str], list[str]]:
    """The configuration's proxy and admin ports where they are free, else port 0; and the
    proxy and admin addresses that were in use."""
    listen: list[Listener] = []
    taken_listen: list[str] = []
    for spec in config.engine.listen:
        free = _is_free(spec.address, spec.port)
        listen.append(spec if free else replace(spec, port=0))
        taken_listen += [] if free else [host_port(spec.address, spec.port)]
    host, port = split_host_port(config.engine.admin, default_host=LOOPBACK)
    free = _is_free(host, port)
    admin = host_port(host, port if free else 0)
    taken_admin = [] if free else [host_port(host, port)]
    return Overrides(listen=tuple(listen), admin=admin), taken_listen, taken_admin


def _is_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now (a later bind can still lose a race: then the
    demo says so and stops)."""
    if port == 0:
        return True
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError:
        return False
    return True


async def _serve_then_cancel(
    scope: trio.CancelScope,
    serve: Callable[..., Awaitable[None]],
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``serve`` (the load balancer); when it returns, cancel ``scope`` (the demo)."""
    try:
        await serve(task_status=task_status)
    finally:
        scope.cancel()


async def _wait_ready(running: Running) -> None:
    """Poll until every endpoint has been probed once (the first round is spread out)."""
    while not running.engine.ready:  # noqa: ASYNC110 - readiness is a derived property
        await trio.sleep(0.2)
