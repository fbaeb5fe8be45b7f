"""Fixtures of the connector tests: a trustme CA, contexts, a connector and an origin."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trustme
from connector_origin import Origin, serve_origin

from lb.connector import ConnectorConfig, ConnectorStats, IngressRule, serve_connector

TUNNEL = "6ff42ae2-765d-4adf-8112-31c55c1551ef"
NAMES = ("127.0.0.1", "localhost", "app.example.com", "*.example.com")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*NAMES).configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
async def origin(nursery: trio.Nursery) -> Origin:
    """An echo origin on 127.0.0.1 (see connector_origin.py)."""
    o = Origin()
    await nursery.start(serve_origin, o)
    return o


Start = Callable[..., Awaitable[tuple[str, ConnectorStats]]]


@pytest.fixture
def start_connector(nursery: trio.Nursery, server_ctx: ssl.SSLContext) -> Start:
    """``await start_connector(rules, **config)`` -> (base https URL, stats)."""

    async def start(rules: list[IngressRule], **kwargs: Any) -> tuple[str, ConnectorStats]:
        fields: dict[str, Any] = {
            "tunnel": TUNNEL,
            "replica": "host-a",
            "datacenter": "FRA",
            "ssl_context": server_ctx,
            **kwargs,
        }
        config = ConnectorConfig(ingress=tuple(rules), **fields)
        stats = ConnectorStats()
        bound = await nursery.start(partial(serve_connector, config, stats=stats))
        host, port = bound[0]
        return f"https://{host}:{port}", stats

    return start


@pytest.fixture
async def client(client_ctx: ssl.SSLContext) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(verify=client_ctx, timeout=5) as c:
        yield c
