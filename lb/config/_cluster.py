"""Checks and resolution of ``engine.cluster`` and of the affinity secret's sources.

A cluster replica probes from exactly one vantage point, its own (``cluster.vantage``, by
default ``engine.datacenter``); the other vantage points are the other replicas.  So the
resolved configuration carries ``engine.vantage_points == (vantage,)``, and everything that
reads vantage points (the health book, the monitor plan, readiness) needs no cluster case.
"""

from __future__ import annotations

import dataclasses
import os

from lb.config._items import Item
from lb.config._report import Report
from lb.config.model import EngineSettings

__all__ = ["resolve_engine"]

_SCHEMES = ("redis://", "rediss://", "unix://")


def resolve_engine(item: Item[EngineSettings], report: Report) -> EngineSettings:
    """``engine`` with the cluster vantage point resolved, after reporting what is wrong."""
    engine = item.value
    if engine.affinity_secret and engine.affinity_secret_file:
        report.error(
            item.at("affinity_secret_file"), "set affinity_secret or affinity_secret_file, not both"
        )
    elif engine.affinity_secret_file and not os.access(engine.affinity_secret_file, os.R_OK):
        report.error(item.at("affinity_secret_file"), "cannot read this file")
    damping = engine.flap_damping
    if damping is not None and not damping.reuse < damping.suppress:
        report.error(item.at("flap_damping", "reuse"), "must be below flap_damping.suppress")
    elif damping is not None and damping.max_suppress > 64 * damping.half_life:
        report.error(
            item.at("flap_damping", "max_suppress"), "must be at most 64 x flap_damping.half_life"
        )
    elif damping is not None and damping.suppress >= damping.ceiling:
        report.error(
            item.at("flap_damping", "suppress"),
            "can never be reached: the penalty is capped at reuse x 2^(max_suppress/half_life)",
        )
    cluster = engine.cluster
    if cluster is None:
        return engine
    where = ("cluster",)
    if not cluster.redis.startswith(_SCHEMES):
        report.error(
            item.at(*where, "redis"), "must be a redis://, rediss:// or unix:// URL of the store"
        )
    vantage = cluster.vantage or engine.datacenter
    if not vantage:
        report.error(
            item.at(*where, "vantage"),
            "a cluster replica needs a vantage point: set cluster.vantage or engine.datacenter",
        )
        return engine
    if engine.vantage_points not in (("local",), (vantage,)):
        report.error(
            item.at("vantage_points"),
            "a cluster replica probes from its cluster vantage point only; "
            "remove vantage_points (the other vantage points are the other replicas)",
        )
    if engine.workers > 1:
        report.error(item.at("workers"), "workers > 1 is not supported with engine.cluster yet")
    if cluster.heartbeat_ttl and cluster.heartbeat_ttl <= cluster.heartbeat:
        report.error(
            item.at(*where, "heartbeat_ttl"),
            "must be longer than heartbeat, or members expire between two heartbeats",
        )
    if not cluster.key_prefix:
        report.error(item.at(*where, "key_prefix"), "must not be empty")
    return dataclasses.replace(
        engine,
        vantage_points=(vantage,),
        cluster=dataclasses.replace(cluster, vantage=vantage),
    )
