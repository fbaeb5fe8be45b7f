"""The live status page at ``/`` and the recent activity it shows, which ``/status`` carries.

Why a page of our own: HAProxy's stats page is the first thing many operators open, and
``/status`` JSON answers "is it healthy" but not "what just happened and where does traffic
go now".  The page (``lb/data/status.html``) is one self-contained file: no external scripts,
styles or fonts, so it works offline and on an air-gapped host.  It fetches ``/status`` every
two seconds and updates the DOM in place; every string from the configuration or the network
(names, addresses, reasons) is set with ``textContent``, never parsed as HTML, and a
``Content-Security-Policy`` allows only the page's own inline script and style (by hash)
and requests to its own origin.

:class:`Activity` is what ``/status`` does not know from the engine alone: the recent health
transitions (a bounded list), the last transition of every endpoint with its reason, and the
requests per endpoint over the last minute, from samples of the request counters taken every
few seconds (so the share covers every worker process, as the counters do).  It is pure and
synchronous: the admin listener feeds it health events and ``now`` readings.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lb.core.health import HealthEvent

__all__ = ["SAMPLE_INTERVAL", "WINDOW", "Activity", "page"]

WINDOW = 60.0
"""Seconds of traffic the share covers."""
SAMPLE_INTERVAL = 5.0
"""Seconds between samples of the request counters (the window is exact to this)."""
RECENT = 50
"""Transitions kept for the page, newest last."""

Counts = Mapping[tuple[str, str], int]
"""Requests so far by (pool, endpoint)."""


@dataclass(frozen=True, slots=True)
class _Transition:
    event: HealthEvent
    wall: float


class Activity:
    """Recent transitions and request-count samples (see the module docstring).

    Args:
        window: seconds the traffic share covers.
        recent: how many transitions to keep.
    """

    def __init__(self, *, window: float = WINDOW, recent: int = RECENT) -> None:
        self.window = window
        self._recent: deque[_Transition] = deque(maxlen=recent)
        self._last: dict[tuple[str, str], _Transition] = {}
        self._samples: deque[tuple[float, dict[tuple[str, str], int]]] = deque()

    def on_health(self, event: HealthEvent, *, wall: float) -> None:
        """Record one transition; ``wall`` is the Unix time of ``event.at``."""
        seen = _Transition(event, wall)
        self._recent.append(seen)
        if event.vantage == "*":
            self._last[(event.pool, event.endpoint)] = seen

    def sample(self, now: float, counts: Counts) -> None:
        """Remember the request counters at ``now``; samples older than the window go, except
        the newest of them (the baseline of the window)."""
        self._samples.append((now, dict(counts)))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def as_json(self, now: float, wall: float, counts: Counts) -> dict[str, Any]:
        """The ``activity`` section of ``/status`` for counters ``counts`` at ``now``.

        ``window`` is the seconds actually covered: less than :attr:`window` shortly after
        start, up to one sample interval more later.
        """
        since, base = now, {}
        for i, (when, counts_then) in enumerate(self._samples):
            if i and when > now - self.window:
                break  # the baseline: the newest sample at least a window old, or the oldest
            since, base = when, counts_then
        total_new = 0
        recent: dict[tuple[str, str], int] = {}
        for key, value in counts.items():
            new = max(0, value - base.get(key, 0))
            recent[key] = new
            total_new += new
        endpoints: dict[str, dict[str, Any]] = {}
        for key in sorted(set(recent) | set(self._last)):
            item: dict[str, Any] = {
                "requests": recent.get(key, 0),
                "share": round(recent.get(key, 0) / total_new, 4) if total_new else 0.0,
                "last_transition": None,
            }
            if (seen := self._last.get(key)) is not None:
                item["last_transition"] = _transition_json(seen, now)
            endpoints[f"{key[0]}/{key[1]}"] = item
        return {
            "window": round(max(0.0, now - since), 3),
            "requests": total_new,
            "endpoints": endpoints,
            "transitions": [_transition_json(t, now) for t in reversed(self._recent)],
            "wall": round(wall, 3),
        }


def _transition_json(seen: _Transition, now: float) -> dict[str, Any]:
    event = seen.event
    return {
        "pool": event.pool,
        "endpoint": event.endpoint,
        "vantage": event.vantage,
        "before": event.before.value,
        "after": event.after.value,
        "reason": event.reason,
        "status": event.status,
        "wall": round(seen.wall, 3),
        "age": round(max(0.0, now - event.at), 3),
    }


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True, slots=True)
class Page:
    """The page's bytes and the headers that confine it."""

    body: bytes
    headers: tuple[tuple[str, str], ...]


def _csp_hash(html: str, tag: str) -> str:
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    if match is None:
        raise RuntimeError(f"status.html has no inline <{tag}>")
    digest = hashlib.sha256(match.group(1).encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def _load() -> Page:
    html = resources.files("lb").joinpath("data/status.html").read_text(encoding="utf-8")
    policy = (
        "default-src 'none'; "
        f"script-src {_csp_hash(html, 'script')}; "
        f"style-src {_csp_hash(html, 'style')}; "
        "connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = (
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    )
    return Page(html.encode(), headers)


_PAGE: Page | None = None


def page() -> Page:
    """The status page (read from the package once)."""
    global _PAGE
    if _PAGE is None:
        _PAGE = _load()
    return _PAGE
