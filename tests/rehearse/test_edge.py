"""The edge stand-in: its replica choice is the simulator's (lb.sim.network), asked the same
way, and on real sockets it passes a refused replica over and refuses malformed requests."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from edge_support import edge_with_connectors
from tls_support import contexts
from waiting import wait_until

from lb.connector.faults import FaultError, Faults
from lb.rehearse.edge import NO_CONNECTOR, Edge, Upstream
from lb.sim.network import Network
from lb.sim.scenario import Scenario, load_scenario

SCENARIO = (
    Path(__file__).resolve().parents[2] / "configs" / "scenarios" / "replicas-one-tunnel.yaml"
)
ADDRESS = "33333333-3333-4333-8333-333333333333.cfargotunnel.com"


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return load_scenario(SCENARIO)


def _edge(sc: Scenario) -> Edge:
    upstreams = [Upstream(r, f"127.0.0.1:{4000 + i}") for i, r in enumerate(sc.replicas[ADDRESS])]
    context = ssl.create_default_context()
    return Edge(
        upstreams,
        sc.config.datacenters,
        server_context=context,
        client_context=context,
        rng=random.Random(1),
    )


def _picks(edge: Edge, dc: str, failed: set[str]) -> set[str]:
    out = set()
    for _ in range(50):
        up = edge.choose(dc, failed)
        out.add("" if up is None else str(up.replica.label))
    return out


@pytest.mark.parametrize("dc", ["FRA", "IAD", "CDG", "SJC", "SYD", ""])
def test_the_edge_picks_the_replicas_the_simulator_picks(scenario: Scenario, dc: str) -> None:
    """Local first, else the nearest (CDG is near FRA, SJC near IAD), else any."""
    expected = {a.replica for a in Network(scenario).answers(ADDRESS, (dc,), dc, "h", "/", 0.0)}
    assert _picks(_edge(scenario), dc, set()) == expected


def test_a_failed_replica_is_passed_over_then_none_is_left(scenario: Scenario) -> None:
    edge = _edge(scenario)
    assert _picks(edge, "FRA", {"host-fra"}) == {"shared/host-iad"}
    assert _picks(edge, "FRA", {"host-fra", "host-iad"}) == {""}


def test_requests_without_a_data_center_go_round_robin(scenario: Scenario) -> None:
    edge = _edge(scenario)
    names = [edge.choose("", set()) for _ in range(4)]
    assert [u.replica.name for u in names if u is not None] == [
        "host-iad",
        "host-fra",
        "host-iad",
        "host-fra",
    ]


# --------------------------------------------------------------------------- on real sockets


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def _running(
    nursery: trio.Nursery, sc: Scenario, ca: trustme.CA
) -> tuple[Edge, str, dict[str, Faults]]:
    """Two real connectors (one per replica) and the edge in front: (edge, its URL, faults)."""
    edge, at, faults = await edge_with_connectors(
        nursery, sc, ADDRESS, ca, tunnel="33333333-3333-4333-8333-333333333333"
    )
    return edge, f"https://{at}", faults


async def test_a_refused_replica_is_passed_over_for_real(
    nursery: trio.Nursery, scenario: Scenario, ca: trustme.CA
) -> None:
    edge, url, faults = await _running(nursery, scenario, ca)
    _, client_ctx = contexts(ca)
    async with httpx.AsyncClient(verify=client_ctx, timeout=5) as client:

        async def get(n: int) -> int:
            headers = {"host": "app.example.com", "cf-ray": "1-FRA", "x-request-id": f"r{n}"}
            r = await client.get(f"{url}/", headers=headers)
            return r.status_code

        assert await get(1) == 200
        assert await get(2) == 200  # kept alive, on both legs
        faults["host-fra"].apply({"do": "refuse"})
        await faults["host-fra"].settled()
        assert await get(3) == 200
        faults["host-iad"].apply({"do": "refuse"})
        await faults["host-iad"].settled()
        assert await get(4) == NO_CONNECTOR
    assert edge.answered == {
        "r1": "shared/host-fra",
        "r2": "shared/host-fra",
        "r3": "shared/host-iad",
    }


LATENCY = 1.5
"""Long enough that paying it twice stands out from a loaded machine's scheduling."""


async def test_the_edge_forwards_at_once_and_waits_out_its_latency_after(
    nursery: trio.Nursery, scenario: Scenario, ca: trustme.CA
) -> None:
    """The edge takes the latency in force when a request comes, forwards it at once and
    waits after the replica's answer: the replica's connector looks at its conditions when
    the edge does, as the simulator asks every layer at the attempt's instant, so a latency
    handed over to the connectors while a request waits at the edge is not paid twice."""
    edge, url, faults = await _running(nursery, scenario, ca)
    _, client_ctx = contexts(ca)
    headers = {"host": "app.example.com", "cf-ray": "1-FRA"}
    answers: list[int] = []
    took: list[float] = []
    async with httpx.AsyncClient(verify=client_ctx, timeout=30) as client:

        async def get() -> None:
            began = trio.current_time()
            answers.append((await client.get(f"{url}/", headers=headers)).status_code)
            took.append(trio.current_time() - began)

        await get()  # the connections, opened before the latency (which delays a handshake)
        edge.faults.apply({"do": "latency", "latency": LATENCY})
        async with trio.open_nursery() as waiting:
            waiting.start_soon(get)
            await wait_until(lambda: edge.served["host-fra"] == 2, what="the replica's answer")
            assert answers == [200]  # the edge still holds the second
            # A hand-over now (the connector's latency set, the edge's cleared) comes after
            # the connector has answered: the request pays the edge's latency alone.
            faults["host-fra"].apply({"do": "latency", "latency": LATENCY})
            edge.faults.apply({"do": "recover"})
        await get()  # the connector's latency alone, on its kept-alive connection
    assert answers == [200, 200, 200]
    assert edge.served["host-fra"] == 3
    assert LATENCY <= took[1] < 2 * LATENCY, took  # once, not twice
    assert LATENCY <= took[2] < 2 * LATENCY, took


async def _raw(url: str, ca: trustme.CA) -> trio.SSLStream[trio.SocketStream]:
    """A TLS connection to the edge stand-in at ``url``, for bytes no HTTP client sends."""
    _, client_ctx = contexts(ca)
    host, port = url.removeprefix("https://").split(":")
    return await trio.open_ssl_over_tcp_stream(host, int(port), ssl_context=client_ctx)


async def test_a_malformed_request_gets_a_400(
    nursery: trio.Nursery, scenario: Scenario, ca: trustme.CA
) -> None:
    _, url, _ = await _running(nursery, scenario, ca)
    stream = await _raw(url, ca)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nbroken header\r\n\r\n")
    answer = b""
    with trio.fail_after(5):
        while chunk := await stream.receive_some(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    await stream.aclose()


async def test_a_reset_or_cut_replica_reaches_the_lb_as_it_is(
    nursery: trio.Nursery, scenario: Scenario, ca: trustme.CA
) -> None:
    """A replica that takes the request and resets is not passed over (the request was
    sent): the LB's connection goes too, as in the simulator; a body cut short reaches the
    LB cut short."""
    edge, url, faults = await _running(nursery, scenario, ca)
    _, client_ctx = contexts(ca)
    headers = {"host": "app.example.com", "cf-ray": "1-FRA"}
    async with httpx.AsyncClient(verify=client_ctx, timeout=5) as client:
        faults["host-fra"].apply({"do": "reset"})
        with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
            await client.get(f"{url}/", headers=headers)
        faults["host-fra"].apply({"do": "truncate"})
        with pytest.raises(httpx.RemoteProtocolError, match="received 2048 bytes"):
            await client.get(f"{url}/", headers=headers)
        faults["host-fra"].apply({"do": "recover"})
        assert (await client.get(f"{url}/", headers=headers)).status_code == 200
    assert edge.served["host-iad"] == 0


async def test_a_target_that_is_not_a_path_gets_a_400_and_the_edge_keeps_serving(
    nursery: trio.Nursery, scenario: Scenario, ca: trustme.CA
) -> None:
    """The 400 is an answer of the edge's own: it waits out the edge's latency first."""
    edge, url, _ = await _running(nursery, scenario, ca)
    stream = await _raw(url, ca)
    await stream.do_handshake()  # before the latency, which delays a handshake too
    edge.faults.apply({"do": "latency", "latency": 0.5})
    began = trio.current_time()
    await stream.send_all(b"OPTIONS * HTTP/1.1\r\nHost: app.example.com\r\nCF-Ray: 1-FRA\r\n\r\n")
    with trio.fail_after(5):
        answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert trio.current_time() - began >= 0.5
    edge.faults.apply({"do": "recover"})
    await stream.aclose()
    _, client_ctx = contexts(ca)
    async with httpx.AsyncClient(verify=client_ctx, timeout=5) as client:
        assert (await client.get(f"{url}/", headers={"host": "app.example.com"})).status_code == 200


def test_only_a_status_at_the_edge_can_be_marked_handed() -> None:
    """``handed`` marks a status of the whole tunnel the edge stand-in handed over (its
    answer is tagged, and counted for no replica); anything else is a one-line 400."""
    faults = Faults(lambda: 10.0)
    state = faults.apply({"do": "status", "status": 503, "handed": True})
    assert state["set"] == {"do": "status", "status": 503, "handed": True}
    assert faults.forced() == (503, True)
    faults.apply({"do": "status", "status": 503})
    assert faults.forced() == (503, False)
    flap = {"do": "flap", "period": 4, "down_for": 1, "how": "status", "status": 502}
    faults.apply({**flap, "since": 9.5, "handed": True})
    assert faults.forced() == (502, True)
    for bad in (
        {"do": "down", "handed": True},
        {"do": "down", "how": "status", "handed": True},
        {"do": "latency", "latency": 1, "how": "status", "handed": True},
        {"do": "status", "status": 503, "handed": 1},
        {"do": "status", "status": 503, "layer": "origin", "handed": True},
        {**flap, "how": "down", "handed": True},
    ):
        with pytest.raises(FaultError, match=r"^handed: "):
            faults.apply(bad)
