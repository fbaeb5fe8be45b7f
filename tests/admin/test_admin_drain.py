"""``/readyz`` during a drain, through the whole service (:func:`lb.service.serve_lb`).

A fronting balancer must stop sending new connections the moment a drain starts, not when
the process is gone: a request is held in flight by an origin that never answers, the
service is told to shut down, and ``/readyz`` must already answer 503 while the proxy is
still draining.  In process, real sockets on 127.0.0.1 port 0, certificates from trustme.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme

from lb.service import Running, serve_lb

pytestmark = pytest.mark.integration

ORIGIN = "slow.example"
LB = "app.localhost"


async def serve_slow_origin(
    ca: trustme.CA,
    got_request: trio.Event,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A TLS origin that reads a request and never answers (until cancelled)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(ORIGIN, LB).configure_cert(context)  # SNI: the client's Host
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = int(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SSLStream[trio.SocketStream]) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # a client that gave up
            if await stream.receive_some(65536):
                got_request.set()
            await trio.sleep_forever()

    task_status.started(port)
    await trio.serve_listeners(handle, [trio.SSLListener(lst, context) for lst in listeners])


def config(origin_port: int) -> str:
    return json.dumps(
        {
            "pools": [{"name": "p", "origins": [{"name": "slow", "address": ORIGIN}]}],
            "load_balancers": [{"name": LB, "default_pools": ["p"], "fallback_pool": "p"}],
            "connect_to": {f"{ORIGIN}:443": f"127.0.0.1:{origin_port}"},
            "engine": {
                "listen": [{"address": "127.0.0.1", "port": 0}],
                "admin": "127.0.0.1:0",
                "drain_timeout": 30,
            },
        }
    )


async def test_readyz_answers_503_while_the_proxy_drains(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    ca = trustme.CA()
    upstream = ssl.create_default_context()
    ca.configure_trust(upstream)
    got_request = trio.Event()
    origin_port = await nursery.start(serve_slow_origin, ca, got_request)
    path = tmp_path / "lb.json"
    path.write_text(config(origin_port))
    running: Running = await nursery.start(
        lambda task_status: serve_lb(
            [str(path)],
            upstream_ssl=upstream,
            seed=1,
            handle_signals=False,
            task_status=task_status,
        )
    )
    (proxy_host, proxy_port), (admin_host, admin_port) = running.proxy[0], running.admin
    async with httpx.AsyncClient(base_url=f"http://{admin_host}:{admin_port}", timeout=10) as admin:
        assert (await admin.get("/readyz")).status_code == 200

        async def in_flight() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                # Cut off when the test ends: its answer is not what is tested here.
                with contextlib.suppress(httpx.HTTPError):
                    await client.get(f"http://{proxy_host}:{proxy_port}/", headers={"Host": LB})

        nursery.start_soon(in_flight)
        with trio.fail_after(10):
            await got_request.wait()
        running.shutdown.set()  # what SIGTERM does
        r = await admin.get("/readyz")
        assert (r.status_code, r.text) == (503, "not ready: draining\n")
        # Still draining (the request is in flight), and still alive.
        assert (await admin.get("/healthz")).status_code == 200
        status = (await admin.get("/status")).json()
        assert status["traffic"]["in_flight"] == 1
    nursery.cancel_scope.cancel()
