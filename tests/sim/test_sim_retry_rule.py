"""R42 in the simulator: only a failed connection is retried, never an HTTP answer.

The proxy (``lb/proxy/exchange.py``) calls ``router.retry`` only when connecting to the endpoint
failed (refused 521, connect timeout 522, unreachable 523); a response whose status happens to
be 521-523 (an origin's, an edge ``status``, an ingress ``http_status:522``) is relayed as is.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sim_builders import CONFIG, TUNNEL_B, scenario

from lb.config import ConfigError
from lb.sim import run_scenario
from lb.sim.network import Network

BASE = """\
config: lb.yaml
duration: 60
seed: 11
report_interval: 10
traffic:
  FRA: {rate: 100, clients: 200}
"""

# b's failures reach users only while they last: a health route keeps its monitor green.
HEALTH_ROUTE = CONFIG.replace(
    "Host: [app.example.com]", "Host: [health.example.com]", 1
)  # the monitor
INGRESS_522 = """\
network:
  ingress:
    tb:
      - {hostname: health.example.com, service: "http_status:200"}
      - {hostname: app.example.com, service: "http_status:522"}
      - {service: "http_status:404"}
"""


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("{at: 20, tunnel: tb, do: refuse}", "521"),
        ("{at: 20, tunnel: tb, do: blackhole}", "522"),
        ("{at: 20, tunnel: tb, do: unreachable}", "523"),
    ],
)
def test_a_failed_connection_is_retried(tmp_path: Path, event: str, status: str) -> None:
    body = BASE + f"timeline:\n  - {event}\n"
    data = run_scenario(scenario(tmp_path, body, config=HEALTH_ROUTE)).data
    assert data["retries"] > 0
    assert status not in data["statuses"] and data["errors"] == 0


@pytest.mark.parametrize(
    "event",
    [
        "{at: 20, origin: tb, do: status, status: 522}",  # the application answers 522
        "{at: 20, tunnel: tb, do: status, status: 522}",  # cloudflared / the edge answers 522
    ],
)
def test_an_http_answer_of_522_is_not_retried(tmp_path: Path, event: str) -> None:
    """The reviewer's failing input: the request stayed on b, as the real proxy keeps it."""
    body = BASE + f"timeline:\n  - {event}\n"
    data = run_scenario(scenario(tmp_path, body, config=HEALTH_ROUTE)).data
    assert data["retries"] == 0
    assert data["statuses"]["522"] == data["errors_by_endpoint"]["main/b"] > 0


def test_an_ingress_http_status_522_is_not_retried(tmp_path: Path) -> None:
    data = run_scenario(scenario(tmp_path, BASE + INGRESS_522, config=HEALTH_ROUTE)).data
    assert data["retries"] == 0
    assert data["statuses"]["522"] == data["by_endpoint"]["main/b"] > 0
    assert data["failovers"] == []  # the health route stays green


def test_a_down_tunnel_is_an_http_answer_so_530_cannot_be_a_failover_code(
    tmp_path: Path,
) -> None:
    config = HEALTH_ROUTE + "engine: {zero_downtime_failover_codes: [521, 522, 523, 530]}\n"
    body = BASE + "timeline:\n  - {at: 20, tunnel: tb, do: down}\n"
    with pytest.raises(ConfigError, match="530 can never trigger a retry"):
        run_scenario(scenario(tmp_path, body, config=config))
    data = run_scenario(scenario(tmp_path, body, config=HEALTH_ROUTE)).data
    assert data["retries"] == 0 and data["statuses"]["530"] > 0


def test_answers_mark_connect_failures(tmp_path: Path) -> None:
    body = BASE + (
        "timeline:\n"
        "  - {at: 10, tunnel: tb, do: refuse}\n"
        "  - {at: 20, tunnel: tb, do: blackhole}\n"
        "  - {at: 30, tunnel: tb, do: unreachable}\n"
        "  - {at: 40, tunnel: tb, do: down}\n"
        "  - {at: 50, tunnel: tb, do: status, status: 522}\n"
        "  - {at: 55, tunnel: tb, do: recover}\n"
        "  - {at: 55, origin: tb, do: status, status: 522}\n"
    )
    network = Network(scenario(tmp_path, body))
    address = f"{TUNNEL_B}.cfargotunnel.com"

    def at(t: float) -> tuple[int, bool]:
        (a,) = network.answers(address, ("FRA",), "FRA", "app.example.com", "/", t)
        return a.status, a.connect_failed

    assert at(5) == (200, False)
    assert at(15) == (521, True)
    assert at(25) == (522, True)
    assert at(35) == (523, True)
    assert at(45) == (530, False)
    assert at(52) == (522, False)
    assert at(57) == (522, False)
