"""The edge stand-in as the rehearsal runs it, a process of its own (``edge.main``): it reads
its JSON spec, serves TLS in front of two real replicas on loopback, and answers the
``answered`` line on its stdin with the replica each request went to; it exits at the end
of its stdin."""

from __future__ import annotations

import json
import ssl
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trustme

from lb.children import stop
from lb.connector.h11io import H11Stream
from lb.rehearse import stack
from lb.rehearse.client import Pool
from lb.sim.scenario import load_scenario

pytestmark = pytest.mark.integration

SCENARIO = (
    Path(__file__).resolve().parents[2] / "configs" / "scenarios" / "replicas-one-tunnel.yaml"
)
ADDRESS = "33333333-3333-4333-8333-333333333333.cfargotunnel.com"


async def _replica(name: bytes, context: ssl.SSLContext, stream: trio.SocketStream) -> None:
    """A replica's connector, reduced to answering every request with its own name."""
    tls = trio.SSLStream(stream, context, server_side=True)
    http = H11Stream(tls, h11.SERVER)
    try:
        while isinstance(await http.next_event(), h11.Request):
            while not isinstance(await http.next_event(), h11.EndOfMessage):
                pass
            headers = [(b"content-length", str(len(name)).encode())]
            await http.send(h11.Response(status_code=200, headers=headers))
            await http.send(h11.Data(data=name))
            await http.send(h11.EndOfMessage())
            http.conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.ProtocolError, ssl.SSLError):
        pass
    finally:
        await trio.aclose_forcefully(tls)


async def test_the_edge_process_forwards_and_reports_what_it_answered(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    upstreams = []
    for name in ("host-fra", "host-iad"):
        serving = partial(trio.serve_tcp, partial(_replica, name.encode(), server), 0)
        listeners = await nursery.start(partial(serving, host="127.0.0.1"))
        upstreams.append([name, f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"])
    pem, ca_file = tmp_path / "edge.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca.cert_pem.write_to_path(str(ca_file))
    spec = tmp_path / "edge.json"
    fields = {"cert": str(pem), "ca": str(ca_file), "seed": "1"}
    spec.write_text(
        json.dumps(
            {"scenario": str(SCENARIO), "address": ADDRESS, "upstreams": upstreams, **fields}
        )
    )
    processes: list[trio.Process] = []
    async with stack._pipes_closed(processes):
        try:
            edge, at, control = await stack._start_edge(spec, tmp_path / "edge.log", processes)
            assert control.startswith("http://127.0.0.1:")
            trusted = ssl.create_default_context()
            ca.configure_trust(trusted)
            pool = Pool(at, tls=trusted)
            try:
                for dc in ("FRA", "IAD"):  # each data center's own replica (the only local one)
                    headers = [
                        (b"host", b"localhost"),
                        (b"cf-ray", f"1-{dc}".encode()),
                        (b"x-request-id", f"r-{dc}".encode()),
                    ]
                    answer = await pool.request(b"GET", b"/", headers)
                    assert (answer.status, answer.body) == (200, f"host-{dc.lower()}".encode())
            finally:
                await pool.aclose()
            labels = {r.name: r.label or r.name for r in load_scenario(SCENARIO).replicas[ADDRESS]}
            assert await edge.answered() == {
                "r-FRA": labels["host-fra"],
                "r-IAD": labels["host-iad"],
            }
            process = edge.process
            assert process.stdin is not None
            await process.stdin.aclose()  # the end of its stdin: it exits by itself
            with trio.fail_after(stack.READY_WAIT):
                assert await process.wait() == 0
        finally:
            await stop(*processes, grace=stack.STOP_GRACE)
