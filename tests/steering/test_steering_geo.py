"""steering.geo: great-circle distance and the one "nearest data center" rule."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from lb.config.model import Datacenter
from steering.geo import distance_km, nearest

DCS = {
    "FRA": Datacenter(code="FRA", region="WEU", latitude=50.03, longitude=8.57),
    "FRA2": Datacenter(code="FRA2", region="WEU", latitude=50.035, longitude=8.575),  # < 1 km
    "AMS": Datacenter(code="AMS", region="WEU", latitude=52.31, longitude=4.76),
    "IAD": Datacenter(code="IAD", region="ENAM", latitude=38.94, longitude=-77.46),
    "SIN": Datacenter(code="SIN", region="SEAS", latitude=1.36, longitude=103.99),
    "XXX": Datacenter(code="XXX", region="WEU"),  # no coordinates
}

ITEMS: dict[str, tuple[str, ...]] = {
    "iad": ("IAD",),
    "ams": ("AMS",),
    "sin+fra": ("SIN", "FRA"),  # judged by its closest data center
    "fra2": ("FRA2",),
    "unknown": ("XXX", "NOPE"),
}


def _dcs(name: str) -> tuple[str, ...]:
    return ITEMS[name]


def test_distance_km_known_pair() -> None:
    assert 360 < distance_km(50.03, 8.57, 52.31, 4.76) < 370  # FRA - AMS
    assert distance_km(1.0, 2.0, 1.0, 2.0) == 0.0


def test_nearest_keeps_ties_within_one_km_in_the_given_order() -> None:
    assert nearest(list(ITEMS), DCS["FRA"], _dcs, DCS) == ["sin+fra", "fra2"]
    assert nearest(["fra2", "sin+fra"], DCS["FRA"], _dcs, DCS) == ["fra2", "sin+fra"]
    assert nearest(list(ITEMS), DCS["FRA"], _dcs, DCS, within_km=0.0) == ["sin+fra"]


def test_nearest_from_elsewhere() -> None:
    assert nearest(list(ITEMS), DCS["IAD"], _dcs, DCS) == ["iad"]
    assert nearest(["iad", "ams"], DCS["SIN"], _dcs, DCS) == ["ams"]


def test_nearest_has_nothing_to_measure() -> None:
    """[] tells the caller to fall back to every item."""
    assert nearest(list(ITEMS), None, _dcs, DCS) == []
    assert nearest(list(ITEMS), DCS["XXX"], _dcs, DCS) == []
    assert nearest(["unknown"], DCS["FRA"], _dcs, DCS) == []
    assert nearest([], DCS["FRA"], _dcs, DCS) == []


coords = st.tuples(st.floats(-90, 90, allow_nan=False), st.floats(-180, 180, allow_nan=False))


@given(here=coords, points=st.lists(coords, min_size=1, max_size=6))
def test_nearest_is_the_minimum_distance(
    here: tuple[float, float], points: list[tuple[float, float]]
) -> None:
    table = {
        f"D{i}": Datacenter(code=f"D{i}", region="WEU", latitude=lat, longitude=lon)
        for i, (lat, lon) in enumerate(points)
    }
    origin = Datacenter(code="H", region="WEU", latitude=here[0], longitude=here[1])
    chosen = nearest(list(table), origin, lambda code: (code,), table)
    dist = {c: distance_km(*here, *points[int(c[1:])]) for c in table}
    least = min(dist.values())
    assert chosen == [c for c in table if dist[c] <= least + 1.0]
    assert all(math.isfinite(dist[c]) for c in chosen)
