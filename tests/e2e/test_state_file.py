"""``engine.state_file``: a restarted ``tunnel-lb run`` serves with the health it had.

The restart test runs the real command twice over two HTTPS endpoints in this process (one per
pool, behind tunnel addresses reached through ``connect_to``).  On the second start the primary's
monitor hangs, so for its first ``timeout`` seconds the process knows only what the state file
told it: without the file the primary is ``unknown`` and the first request goes to the fallback
pool (R30); with it, to the primary.
"""

from __future__ import annotations

import json
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import h11
import httpx
import pytest
import trio
import trustme
from stack_support import start_lb_process, until_url

PRIMARY = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
BACKUP = "0f3e2d1c-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
HOST = "app.localhost"


async def serve_endpoint(
    name: str,
    context: ssl.SSLContext,
    hang: Callable[[], bool],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """An HTTPS endpoint answering its ``name``; ``/healthz`` hangs while ``hang()``."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]

    async def one(stream: trio.SSLStream[trio.SocketStream]) -> None:
        conn = h11.Connection(h11.SERVER)
        with trio.move_on_after(30):
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        if event.target == b"/healthz" and hang():
                            await trio.sleep_forever()
                        body = name.encode()
                        head = h11.Response(
                            status_code=200, headers=[(b"content-length", b"%d" % len(body))]
                        )
                        out = conn.send(head) + (conn.send(h11.Data(data=body)) or b"")
                        await stream.send_all(out + (conn.send(h11.EndOfMessage()) or b""))
                    elif isinstance(event, h11.EndOfMessage):
                        conn.start_next_cycle()
                    else:
                        return
            except (trio.BrokenResourceError, h11.RemoteProtocolError, ssl.SSLError):
                return

    async with trio.open_nursery() as nursery:
        listener = trio.SSLListener(listeners[0], context, https_compatible=True)
        task_status.started(port)
        await trio.serve_listeners(one, [listener], handler_nursery=nursery)


def config(ports: dict[str, int], ca: Path, state: Path) -> str:
    return json.dumps(
        {
            "monitors": [
                {
                    "id": "app",
                    "type": "https",
                    "path": "/healthz",
                    "interval": 10,
                    "timeout": 5,
                    "retries": 0,
                    "header": {"Host": [HOST]},
                }
            ],
            "pools": [
                {
                    "name": name,
                    "monitor": "app",
                    "origins": [
                        {
                            "name": name,
                            "address": f"{uuid}.cfargotunnel.com",
                            "header": {"Host": [HOST]},
                        }
                    ],
                }
                for name, uuid in (("primary", PRIMARY), ("backup", BACKUP))
            ],
            "load_balancers": [
                {
                    "name": HOST,
                    "proxied": True,
                    "default_pools": ["primary", "backup"],
                    "fallback_pool": "backup",
                }
            ],
            "connect_to": {
                f"{uuid}.cfargotunnel.com:443": f"127.0.0.1:{ports[uuid]}"
                for uuid in (PRIMARY, BACKUP)
            },
            "engine": {
                "minimum_interval": 1,
                "listen": [{"address": "127.0.0.1", "port": 0}],
                "admin": "127.0.0.1:0",
                "upstream_ca": str(ca),
                "drain_timeout": 1,
                "state_file": str(state),
            },
        }
    )


@pytest.mark.integration
async def test_a_restarted_process_serves_its_first_request_with_the_saved_health(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST, "*.cfargotunnel.com").configure_cert(server)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    hanging = False
    state = tmp_path / "state.json"
    log = tmp_path / "lb.log"
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=10) as client:
        ports = {
            PRIMARY: await nursery.start(serve_endpoint, "primary", server, lambda: hanging),
            BACKUP: await nursery.start(serve_endpoint, "backup", server, lambda: False),
        }
        path = tmp_path / "lb.json"
        # Port 0: each start binds ports of its own and says which in its ready line.
        path.write_text(config(ports, ca_file, state))

        def all_healthy(r: httpx.Response) -> bool:
            pools = r.json()["pools"]
            return all(p["endpoints"][0]["health"] == "healthy" for p in pools)

        first, ready = await start_lb_process(nursery, path, log=log)
        await until_url(client, f"http://127.0.0.1:{ready.admin}/status", all_healthy)
        first.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await first.wait() == 0
        saved = json.loads(state.read_text())
        assert {e["endpoint"]: e["vantages"] for e in saved["endpoints"]} == {
            "primary": {"local": "healthy"},
            "backup": {"local": "healthy"},
        }

        hanging = True  # from now on the primary's monitor learns nothing for 5 s
        second, ready = await start_lb_process(nursery, path, log=log)
        # Its first request (``ready`` said it listens): the primary's probes hang, so only
        # the state file can have made it healthy.
        response = await client.get(f"http://127.0.0.1:{ready.listen[0]}/", headers={"Host": HOST})
        assert response.status_code == 200, response.text
        assert response.text == "primary"
        second.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            await second.wait()
        nursery.cancel_scope.cancel()
    assert "state_file_loaded" in log.read_text()
