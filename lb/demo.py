"""The live demo: a load balancer over two local tunnel stand-ins in two data centers.

``tunnel-lb demo`` (the README's first command) needs nothing running beforehand:

1. it makes a throw-away certificate authority (with ``trustme``) and a certificate for every
   Host the configuration sends to its tunnels;
2. it starts one ``tunnel-lb connector`` process per tunnel endpoint, listening where
   ``connect_to`` sends that tunnel, answering the monitor's path with 200 and everything
   else with ``hello_world`` (which says which tunnel, replica and data center served);
3. it runs the load balancer of ``configs/quickstart.yaml`` in this process, trusting that
   authority for probes and traffic;
4. it prints what to curl, where ``/metrics`` and ``/status`` are, and the process id to kill
   to watch failover.

With ``--duration`` it also sends a few requests itself, prints where they went, and stops
after that many seconds: the demo's own smoke test.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from lb.config.model import Config
from lb.service import Running, serve_lb

__all__ = ["DEFAULT_CONFIG", "run_demo"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


@dataclass(frozen=True, slots=True)
class _Tunnel:
    uuid: str
    name: str
    replica: str
    datacenter: str
    host: str
    listen: str
    health_path: str


def _tunnels(config: Config) -> list[_Tunnel]:
    """One stand-in per tunnel endpoint that ``connect_to`` maps to a local port."""
    out: dict[str, _Tunnel] = {}
    for pool in config.pools:
        monitor = config.monitor(pool.monitor) if pool.monitor else None
        for origin in pool.origins:
            uuid = origin.tunnel_id
            port = origin.port or 443
            listen = config.connect_to.get(f"{origin.address.lower()}:{port}")
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


def _banner(running: Running, tunnels: list[_Tunnel], pids: dict[str, int]) -> str:
    host, port = running.proxy[0]
    ahost, aport = running.admin
    lb = running.engine.config.load_balancers[0].name
    lines = [
        "",
        "tunnel-lb demo is running.",
        f"  load balancer {lb} on http://{host}:{port}",
        f"    curl -s -H 'Host: {lb}' http://{host}:{port}/",
        f"  page     open http://{ahost}:{aport}/ in a browser (live status)",
        f"  status   curl -s http://{ahost}:{aport}/status",
        f"  metrics  curl -s http://{ahost}:{aport}/metrics",
        f"  explain  curl -s 'http://{ahost}:{aport}/explain?host={lb}'",
        "  tunnel stand-ins:",
    ]
    lines += [
        f"    {t.name} ({t.uuid}, {t.datacenter}) on {t.listen}: pid {pids[t.uuid]}"
        for t in tunnels
    ]
    first = tunnels[0]
    lines += [
        f"  watch failover: kill {pids[first.uuid]}   # stops {first.name}",
        "    requests keep answering 200 (zero-downtime retry into the next pool, R43), and",
        "    within interval x consecutive_down + timeout /status shows the pool critical",
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


async def run_demo(config_path: Path, *, duration: float | None = None) -> int:
    """Run the demo; see the module docstring.  Returns the process exit code."""
    from lb.config.loader import load_config

    try:
        import trustme  # optional: only the demo makes certificates
    except ImportError:
        print("error: the demo needs `trustme` (pip install trustme)", file=sys.stderr)
        return 1
    config = load_config([config_path]).config
    tunnels = _tunnels(config)
    if not tunnels:
        print(f"error: {config_path}: no tunnel endpoint is mapped by connect_to", file=sys.stderr)
        return 2
    ca = trustme.CA()
    leaf = ca.issue_cert(*sorted({t.host for t in tunnels}))
    with tempfile.TemporaryDirectory(prefix="tunnel-lb-demo-") as tmp:
        directory = Path(tmp)
        cert = directory / "tunnel.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
        upstream = ssl.create_default_context()
        ca.configure_trust(upstream)
        async with trio.open_nursery() as nursery:
            pids: dict[str, int] = {}
            for t in tunnels:
                path = _write_connector(t, directory, cert)
                process = await nursery.start(
                    functools.partial(
                        trio.run_process,
                        [sys.executable, "-m", "lb", "connector", "--quiet", str(path)],
                        check=False,
                    )
                )
                pids[t.uuid] = process.pid
            await _wait_listening([t.listen for t in tunnels])
            # Once the load balancer has stopped (SIGTERM/SIGINT drained it, or --duration
            # ran out), cancel the nursery: that terminates the stand-in processes, which
            # would otherwise keep the demo running forever.
            running: Running = await nursery.start(
                _serve_then_cancel,
                nursery.cancel_scope,
                functools.partial(
                    serve_lb,
                    [str(config_path)],
                    config=config,
                    upstream_ssl=upstream,
                    handle_signals=duration is None,
                ),
            )
            print(_banner(running, tunnels, pids), flush=True)
            if duration is not None:
                with trio.move_on_after(duration):
                    await _wait_ready(running)
                    seen = await _self_test(running, 10)
                    print("self-test, 10 requests:", dict(seen), flush=True)
                    await trio.sleep_forever()
                running.shutdown.set()
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
    return 0


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


async def _wait_listening(addresses: list[str]) -> None:
    """Wait (at most 10 s) until every stand-in accepts connections."""
    with trio.fail_after(10):
        for address in addresses:
            host, _, port = address.rpartition(":")
            while True:
                try:
                    stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                break
