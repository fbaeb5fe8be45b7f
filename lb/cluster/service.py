"""The cluster in ``tunnel-lb run``: the scheduler to build and the task to start.

:mod:`lb.service` calls two functions and knows nothing else about the cluster:

* :func:`make_scheduler` builds the monitor scheduler: a
  :class:`~lb.cluster.shard.ShardedScheduler` (runs only owned probes) with
  ``engine.cluster``, the plain one otherwise;
* :func:`serve_cluster` starts the :class:`~lb.cluster.driver.ClusterNode` and its metrics
  before the scheduler and the proxy start, and returns at once without ``engine.cluster``.
  Its ``started()`` comes after the warm start (or after the first failed attempt to reach
  the store, then degraded), so the first request is served with the cluster's health.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lb.cluster.shard import ShardedScheduler
from lb.config.model import Config
from lb.engine import Engine
from lb.metrics import Metrics
from monitors.scheduler import Scheduler

if TYPE_CHECKING:
    from lb.cluster.driver import ClusterNode

__all__ = ["ClusterCollector", "make_scheduler", "serve_cluster"]


def make_scheduler(config: Config, *args: Any, **kwargs: Any) -> Scheduler:
    """``Scheduler(*args, **kwargs)``, sharded when ``engine.cluster`` is set."""
    if config.engine.cluster is None:
        return Scheduler(*args, **kwargs)
    return ShardedScheduler(*args, **kwargs)


async def serve_cluster(
    engine: Engine,
    scheduler: Scheduler,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[ClusterNode | None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run this replica's cluster membership, if configured (see the module docstring)."""
    if engine.config.engine.cluster is None or not isinstance(scheduler, ShardedScheduler):
        task_status.started(None)
        return
    # Imported here, only in a cluster: the Redis client costs every start ~0.1 s otherwise.
    from lb.cluster.driver import ClusterNode

    node = ClusterNode(engine, scheduler)
    metrics.registry.register(ClusterCollector(node))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        task_status.started(node)


class ClusterCollector:
    """The ``lb_cluster_*`` metric families (``docs/metrics.md``)."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    def describe(self) -> Iterable[Metric]:
        return self._families(sample=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(sample=True)

    def _families(self, *, sample: bool) -> list[Metric]:
        node = self.node
        stats = node.stats
        connected = GaugeMetricFamily(
            "lb_cluster_store_connected", "1 while the cluster store answers, else 0 (degraded)."
        )
        members = GaugeMetricFamily(
            "lb_cluster_members",
            "Live replicas seen per vantage point (this one included).",
            labels=["vantage"],
        )
        configs = GaugeMetricFamily(
            "lb_cluster_config_replicas",
            "Live replicas per configuration hash; more than one hash is drift.",
            labels=["config"],
        )
        owned = GaugeMetricFamily(
            "lb_cluster_probes_owned", "Probe identities this replica runs for its vantage point."
        )
        age = GaugeMetricFamily(
            "lb_cluster_vote_age_seconds",
            "Age of the newest held vote per other vantage point.",
            labels=["vantage"],
        )
        published = CounterMetricFamily(
            "lb_cluster_votes_published", "Votes this replica sent to the store."
        )
        received = CounterMetricFamily(
            "lb_cluster_votes_received", "Votes of other replicas taken into the health book."
        )
        ops = CounterMetricFamily("lb_cluster_store_operations", "Store commands sent.")
        bad = CounterMetricFamily(
            "lb_cluster_bad_records",
            "Records in the store that were ignored, by kind (garbage, format, invalid...).",
            labels=["kind"],
        )
        outages = CounterMetricFamily(
            "lb_cluster_degraded", "Times the store was lost (cluster_degraded)."
        )
        if sample:
            now = node.wall()
            connected.add_metric([], 1.0 if node.connected else 0.0)
            per_vantage: dict[str, int] = {}
            for hb in (node.members if node.connected else {}).values():
                if hb.member != node.me:
                    per_vantage[hb.vantage] = per_vantage.get(hb.vantage, 0) + 1
            per_vantage[node.vantage] = per_vantage.get(node.vantage, 0) + 1
            for vantage, n in sorted(per_vantage.items()):
                members.add_metric([vantage], n)
            for config, n in sorted(node.config_counts().items()):
                configs.add_metric([config], n)
            owned.add_metric([], node.probes_owned)
            for vantage, seconds in sorted(node.tally.ages(now).items()):
                age.add_metric([vantage], seconds)
            published.add_metric([], stats.published)
            received.add_metric([], stats.received)
            ops.add_metric([], stats.store_ops)
            for kind, n in sorted(stats.bad.items()):
                bad.add_metric([kind], n)
            outages.add_metric([], stats.degraded)
        return [connected, members, configs, owned, age, published, received, ops, bad, outages]
