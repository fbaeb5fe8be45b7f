"""The sharded scheduler runs the owned jobs, and a reload's new jobs follow the same rule."""

from __future__ import annotations

import random

from lb.cluster.members import owner, probe_key
from lb.cluster.shard import ShardedScheduler
from lb.config.model import Config, EngineSettings, LoadBalancer, Monitor, Origin, Pool
from lb.core.book import HealthBook
from monitors.network import NetworkTransport
from monitors.spec import Job, jobs_for_config


def jobs(n: int) -> list[Job]:
    pool = Pool(
        name="p",
        monitor="m",
        origins=tuple(Origin(name=f"e{i}", address=f"10.0.0.{i + 1}") for i in range(n)),
    )
    config = Config(
        monitors=(Monitor(id="m", type="https"),),
        pools=(pool,),
        load_balancers=(LoadBalancer(name="x.example", default_pools=("p",), fallback_pool="p"),),
        engine=EngineSettings(vantage_points=("fra",)),
    )
    return jobs_for_config(config, HealthBook(config).targets())


def test_owned_jobs_only_and_reloads_follow_the_rule() -> None:
    scheduler = ShardedScheduler(NetworkTransport(), print, rng=random.Random(0))
    scheduler.update(jobs(10))
    assert len(scheduler.jobs) == 10  # no rule yet: everything
    members = ("fra/a", "fra/b")
    scheduler.reshard(lambda job: owner(probe_key(job.fanout), members) == "fra/a")
    mine = {probe_key(j.fanout) for j in scheduler.jobs}
    assert mine == {
        k for k in (probe_key(j.fanout) for j in jobs(10)) if owner(k, members) == "fra/a"
    }
    scheduler.update(jobs(40))  # a reload adds endpoints: placed at once by the same rule
    keys = [probe_key(j.fanout) for j in jobs(40)]
    assert {probe_key(j.fanout) for j in scheduler.jobs} == {
        k for k in keys if owner(k, members) == "fra/a"
    }
    assert len(scheduler.all_jobs) == 40
