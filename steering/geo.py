"""Great-circle distance for proximity steering (R29) and the nearest-replica tie-break."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TypeVar

__all__ = ["Located", "client_country", "distance_km", "nearest"]

_EARTH_RADIUS_KM = 6371.0088

T = TypeVar("T")


class Located(Protocol):
    """Anything with optional coordinates in degrees (``lb.config.model.Datacenter``)."""

    @property
    def latitude(self) -> float | None: ...

    @property
    def longitude(self) -> float | None: ...


def client_country(value: str) -> str:
    """The ISO country of a ``CF-IPCountry``-style header value, or "" for anything else:
    Cloudflare's ``XX`` (unknown) and ``T1`` (Tor) say "no country", and a value that is not
    two letters is ignored rather than trusted."""
    code = value.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha() or code == "XX":
        return ""
    return code


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in kilometres between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def nearest(
    items: Iterable[T],
    here: Located | None,
    datacenters_of: Callable[[T], Iterable[str]],
    datacenters: Mapping[str, Located],
    *,
    within_km: float = 1.0,
) -> list[T]:
    """The items whose closest data center is nearest to ``here``, in their given order.

    An item's distance is that of the closest of its data centers (``datacenters_of(item)``,
    codes looked up in ``datacenters``); every item within ``within_km`` of the nearest one is
    kept, so data centers in one city tie.  Codes missing from ``datacenters`` or without
    coordinates are ignored, and an item with none left is never chosen.

    Returns ``[]`` when there is nothing to measure: ``here`` is None or has no coordinates,
    or no item has a located data center.  Callers then fall back to all items.

    Used for the edge's replica choice in the simulator (:mod:`lb.sim.network`) and fit for
    the router's local-preference fallback (nearest endpoints when none is in the data center).
    """
    if here is None:
        return []
    lat, lon = here.latitude, here.longitude
    if lat is None or lon is None:
        return []
    scored: list[tuple[float, T]] = []
    for item in items:
        best = math.inf
        for code in datacenters_of(item):
            there = datacenters.get(code)
            if there is None:
                continue
            t_lat, t_lon = there.latitude, there.longitude
            if t_lat is None or t_lon is None:
                continue
            best = min(best, distance_km(lat, lon, t_lat, t_lon))
        if best < math.inf:
            scored.append((best, item))
    if not scored:
        return []
    least = min(d for d, _ in scored)
    return [item for d, item in scored if d <= least + within_km]
