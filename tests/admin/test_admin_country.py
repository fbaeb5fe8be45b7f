"""Issue 15, item 3: ``/explain`` takes the client's country as a request field."""

from __future__ import annotations

from admin_builders import HOST, StartAdmin, all_healthy

from lb.engine import Engine


async def test_item_03_explain_country_parameter(start_admin: StartAdmin, engine: Engine) -> None:
    client = await start_admin()
    all_healthy(engine)
    r = await client.get("/explain", params={"host": HOST, "country": "de"})
    assert r.status_code == 200
    assert r.json()["trace"][0] == "client country DE (before the data center's)"
    r = await client.get("/explain", params={"host": HOST, "country": "XX"})  # unknown
    assert not any("client country" in step for step in r.json()["trace"])
