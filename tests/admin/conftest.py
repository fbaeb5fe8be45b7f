"""Fixtures: an engine with metrics, and a real admin listener on 127.0.0.1 port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import pytest
import trio
from admin_builders import StartAdmin
from admin_builders import engine as make_engine

from lb.admin import ReloadResult, serve_admin
from lb.engine import Engine
from lb.metrics import Metrics


@pytest.fixture
def engine() -> Engine:
    return make_engine()


@pytest.fixture
def metrics(engine: Engine) -> Metrics:
    m = Metrics()
    m.attach(engine)
    return m


@pytest.fixture
async def start_admin(
    engine: Engine, metrics: Metrics, nursery: trio.Nursery
) -> AsyncIterator[StartAdmin]:
    """Start ``serve_admin`` on a free loopback port (``options`` go to it); returns a client
    bound to it."""
    clients: list[httpx.AsyncClient] = []

    async def start(
        reload: Callable[[], Awaitable[ReloadResult]] | None = None, **options: Any
    ) -> httpx.AsyncClient:
        host, port = await nursery.start(
            partial(
                serve_admin, engine, metrics, host="127.0.0.1", port=0, reload=reload, **options
            )
        )
        client = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
