"""Issue 15, item 3: the client's country comes from a trusted proxy's ``CF-IPCountry``.

Two pools of one endpoint each; German clients go to ``de`` (``country_pools``), everyone
else to ``p1``.  The header counts only from a peer in ``engine.trusted_proxies``.
"""

from __future__ import annotations

import dataclasses
import random

import trio
from proxy_support import Certs, get, make_config, serve_backend

from lb.config.model import Config, EngineSettings, Pool
from lb.engine import Engine as LbEngine
from lb.proxy import ProxyServer


async def start(nursery: trio.Nursery, certs: Certs, **engine: object) -> int:
    backends = [await nursery.start(serve_backend, f"b{i}", certs.backend) for i in range(2)]
    base = make_config([b.port for b in backends])
    p1, fallback = base.pools
    pools = (
        dataclasses.replace(p1, origins=p1.origins[:1]),
        Pool(name="de", origins=p1.origins[1:]),
        fallback,
    )
    lb = dataclasses.replace(
        base.load_balancers[0], steering_policy="geo", country_pools={"DE": ("de",)}
    )
    settings: EngineSettings = dataclasses.replace(base.engine, **engine)  # type: ignore[arg-type]
    cfg: Config = dataclasses.replace(base, pools=pools, load_balancers=(lb,), engine=settings)
    server = ProxyServer(
        LbEngine(cfg, now=trio.current_time()), rng=random.Random(1), upstream_ssl=certs.client
    )
    listeners = list(await trio.open_tcp_listeners(0, host="127.0.0.1"))
    addresses = await nursery.start(server.serve, listeners)
    return int(addresses[0][1])


async def backend_for(port: int, country: str, header: str = "CF-IPCountry") -> str | None:
    response = await get(port, "/", headers=[(header, country)])
    assert response.status == 200
    return response.header("x-backend")


async def test_item_03_country_header_from_a_trusted_proxy(
    nursery: trio.Nursery, certs: Certs
) -> None:
    port = await start(nursery, certs, trusted_proxies=("127.0.0.0/8",))
    assert await backend_for(port, "DE") == "b1"
    assert await backend_for(port, "de") == "b1"
    assert await backend_for(port, "FR") == "b0"
    assert await backend_for(port, "XX") == "b0"  # Cloudflare's "unknown"


async def test_item_03_country_header_from_anyone_else_is_ignored(
    nursery: trio.Nursery, certs: Certs
) -> None:
    port = await start(nursery, certs)
    assert await backend_for(port, "DE") == "b0"


async def test_item_03_country_header_name_is_configurable(
    nursery: trio.Nursery, certs: Certs
) -> None:
    port = await start(
        nursery, certs, trusted_proxies=("127.0.0.0/8",), client_country_header="X-Country"
    )
    assert await backend_for(port, "DE", "X-Country") == "b1"
    assert await backend_for(port, "DE") == "b0"
