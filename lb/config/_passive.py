"""Checks of ``passive_health`` (``engine`` and per pool) that span its fields.

Kept apart from :mod:`lb.config._checks` so that the passive-health rules read in one place.
"""

from __future__ import annotations

from lb.config._items import Item
from lb.config._report import Report
from lb.config._source import Segment
from lb.config.model import EngineSettings, Pool

__all__ = ["check_engine_passive", "check_pool_passive"]


def _check(item: Item[EngineSettings] | Item[Pool], report: Report) -> None:
    passive = item.value.passive_health
    if passive is None or not passive.enabled:
        return

    def at(*sub: Segment) -> tuple[Segment, ...]:
        return ("passive_health", *sub)

    if passive.consecutive_connect_failure == 0 and passive.consecutive_5xx == 0:
        report.error(
            item.at(*at("consecutive_5xx")),
            "nothing could eject an endpoint: set consecutive_5xx or "
            "consecutive_connect_failure above 0 (or enabled: false)",
        )
    if passive.max_ejection_time < passive.base_ejection_time:
        report.error(item.at(*at("max_ejection_time")), "must be at least base_ejection_time")


def check_engine_passive(item: Item[EngineSettings], report: Report) -> None:
    """``engine.passive_health``: its fields.  (With ``workers > 1`` the parent decides for
    every worker: see :mod:`lb.workers`.)"""
    _check(item, report)


def check_pool_passive(item: Item[Pool], report: Report) -> None:
    """A pool's ``passive_health``: its fields, and a monitor to bring endpoints back."""
    _check(item, report)
    passive = item.value.passive_health
    if passive is not None and passive.enabled and not item.value.monitored:
        report.error(
            item.at("passive_health"),
            "needs a monitor (or monitor_group) on the pool: its monitor brings an ejected "
            "endpoint back",
        )
