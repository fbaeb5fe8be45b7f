"""Cluster benchmark: vote propagation, store operations per probe, probe sharding, and the
proxy's throughput with the cluster on and off.

One command::

    .venv/bin/python bench/cluster.py            # everything, ~1-2 minutes
    .venv/bin/python bench/cluster.py --quick    # fewer samples, 3-second wrk runs

It starts its own ``redis-server`` (``scripts/install-redis``) on a free loopback port, with
no persistence, and reports, from one run:

* **propagation**: time from a probe result applied on replica A (``Engine.apply``) to the
  resulting vote applied on replica B (B's health event for A's vantage point), both
  :class:`~lb.cluster.driver.ClusterNode` s in this process over the real store.  Includes the
  ``cluster.batch`` window (10 ms by default).  Goal: p99 < 50 ms on loopback.
* **store operations per probe**: commands sent by a replica while 300 endpoints are probed
  at random moments, for votes only and with heartbeats.  Goal: <= 2.
* **probes per replica**: live ClusterNodes of one vantage point over 300 probe identities,
  1, 2 and 3 replicas: the share of each and the total.  Goal: total constant within 5 %.
* **throughput**: ``wrk -t1 -c50`` through ``tunnel-lb run`` over the bench/proxy.py backend
  (nginx), monitored pool, cluster off vs on (interleaved rounds, median), and the LB
  process's CPU per request (less sensitive to other jobs on the machine).  Goal: >= 0.97x.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import proxy as proxy_bench  # noqa: E402 - bench/proxy.py, for the backend and wrk

from lb.cluster.driver import ClusterNode  # noqa: E402
from lb.cluster.shard import ShardedScheduler  # noqa: E402
from lb.config.model import (  # noqa: E402
    Cluster,
    Config,
    EngineSettings,
    LoadBalancer,
    Monitor,
    Origin,
    Pool,
)
from lb.core.health import HealthEvent, ProbeResult  # noqa: E402
from lb.engine import Engine as LbEngine  # noqa: E402
from monitors.network import NetworkTransport  # noqa: E402
from monitors.spec import jobs_for_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    path = shutil.which("redis-server")
    if path is None:
        sys.exit("redis-server is missing: run scripts/install-redis")
    for _ in range(5):
        port = free_port()
        argv = [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        proc = subprocess.Popen([*argv, "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return proc, f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.02)  # noqa: TID251 - plain sync start-up code
        proc.kill()
        proc.wait()
    sys.exit("redis-server did not start")


def config(url: str, vantage: str, n: int, prefix: str) -> Config:
    pool = Pool(
        name="p",
        monitor="m",
        origins=tuple(Origin(name=f"e{i}", address=f"10.1.{i // 250}.{i % 250}") for i in range(n)),
    )
    return Config(
        monitors=(Monitor(id="m", type="https", interval=10, timeout=1, retries=0),),
        pools=(pool,),
        load_balancers=(LoadBalancer(name="x.example", default_pools=("p",), fallback_pool="p"),),
        engine=EngineSettings(
            vantage_points=(vantage,),
            affinity_secret="bench",
            cluster=Cluster(redis=url, vantage=vantage, key_prefix=prefix, heartbeat=0.2),
        ),
    )


@asynccontextmanager
async def node(url: str, vantage: str, n: int, prefix: str) -> AsyncIterator[ClusterNode]:
    cfg = config(url, vantage, n, prefix)
    engine = LbEngine(cfg, now=trio.current_time())
    scheduler = ShardedScheduler(NetworkTransport(), engine.apply, rng=random.Random(0))
    scheduler.update(jobs_for_config(cfg, engine.targets()))
    member = ClusterNode(engine, scheduler)
    async with trio.open_nursery() as nursery:
        await nursery.start(member.run)
        try:
            yield member
        finally:
            nursery.cancel_scope.cancel()


def result(n: ClusterNode, endpoint: str, ok: bool) -> ProbeResult:
    return ProbeResult(
        pool="p", endpoint=endpoint, vantage=n.vantage, at=trio.current_time(), ok=ok
    )


async def propagation(url: str, samples: int) -> dict[str, float]:
    async with node(url, "fra", 1, "prop:") as a, node(url, "ams", 1, "prop:") as b:
        arrived = trio.Event()

        def seen(event: HealthEvent) -> None:
            if event.vantage == "fra":
                arrived.set()

        b.engine.observers.health.append(seen)
        lat: list[float] = []
        for i in range(samples):
            arrived = trio.Event()
            t0 = time.perf_counter()
            a.engine.apply(result(a, "e0", i % 2 == 0))  # flips fra's state every time
            with trio.fail_after(5):
                await arrived.wait()
            lat.append(time.perf_counter() - t0)
            await trio.sleep(0.002)
    lat.sort()
    return {
        "samples": len(lat),
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "max_ms": 1000 * lat[-1],
    }


async def ops_per_probe(url: str, seconds: float) -> dict[str, float]:
    n = 300
    async with node(url, "fra", n, "ops:") as a:
        await trio.sleep(0.5)
        ops0, beats0 = a.stats.store_ops, a.stats.results
        rng = random.Random(1)
        # every endpoint once per "interval" of `seconds`, at random moments
        moments = sorted((rng.uniform(0, seconds), i) for i in range(n))
        t0 = trio.current_time()
        for at, i in moments:
            await trio.sleep_until(t0 + at)
            a.engine.apply(result(a, f"e{i}", True))
        await trio.sleep(0.2)
        probes = a.stats.results - beats0
        total = a.stats.store_ops - ops0
        heartbeat_ops = 3 * int((trio.current_time() - t0) / a.settings.heartbeat + 1)
        return {
            "probes": probes,
            "ops_total": total,
            "ops_per_probe_with_heartbeats": total / probes,
            "ops_per_probe_votes": max(0, total - heartbeat_ops) / probes,
        }


async def sharding(url: str) -> dict[str, list[int]]:
    n = 300
    out: dict[str, list[int]] = {}
    for k in (1, 2, 3):
        prefix = f"shard{k}:"
        async with trio.open_nursery() as nursery:
            members: list[ClusterNode] = []
            for _ in range(k):
                cfg_node = node(url, "fra", n, prefix)
                members.append(await nursery.start(_hold, cfg_node))
            with trio.fail_after(10):
                while True:  # every member sees all k and the shares add up
                    seen = [sum(p.vantage == "fra" for p in m.members.values()) for m in members]
                    if seen == [k] * k and sum(m.probes_owned for m in members) == n:
                        break
                    await trio.sleep(0.05)
            out[str(k)] = [m.probes_owned for m in members]
            nursery.cancel_scope.cancel()
    return out


async def _hold(
    cm: object, *, task_status: trio.TaskStatus[ClusterNode] = trio.TASK_STATUS_IGNORED
) -> None:
    async with cm as member:  # type: ignore[attr-defined]
        task_status.started(member)
        await trio.sleep_forever()


def throughput(url: str, seconds: float, reps: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="tunnel-lb-bench-cluster-"))
    servers = proxy_bench.Servers()
    # bench/proxy.py's backend on free ports (its fixed ones may be taken on a shared machine)
    proxy_bench.BACKEND_PORTS = (free_port(), free_port())
    try:
        proxy_bench.make_certs(tmp)
        servers.start(
            [proxy_bench.binary("nginx"), "-c", str(proxy_bench.backend_conf(tmp)), "-p", str(tmp)]
        )
        for p in proxy_bench.BACKEND_PORTS:
            proxy_bench.wait_port(p)
        ports = {"off": free_port(), "on": free_port()}
        pids: dict[str, int] = {}
        for name, port in ports.items():
            path = proxy_bench.run_config(tmp, port, 1)
            conf = json.loads(path.read_text())
            conf["engine"]["admin"] = f"127.0.0.1:{free_port()}"
            conf["engine"]["minimum_interval"] = 1
            conf["monitors"] = [{"id": "m", "type": "https", "interval": 1, "timeout": 1}]
            conf["monitors"][0]["header"] = {"Host": [proxy_bench.HOST]}
            conf["pools"][0]["monitor"] = "m"
            if name == "on":
                conf["engine"]["cluster"] = {"redis": url, "vantage": "fra", "key_prefix": "tp:"}
            path = tmp / f"{name}.json"
            path.write_text(json.dumps(conf))
            pids[name] = servers.start([sys.executable, "-m", "lb", "run", str(path)]).pid
            proxy_bench.wait_port(port)
            time.sleep(2)  # noqa: TID251 - plain sync driver: first probes, health known
            proxy_bench.warm(port)
        rps: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        for i in range(reps):
            for name in ("off", "on") if i % 2 == 0 else ("on", "off"):  # no order bias
                before = proxy_bench.cpu_seconds(pids[name])
                res = proxy_bench.run_wrk(ports[name], seconds)
                used = proxy_bench.cpu_seconds(pids[name]) - before
                rps[name].append(res["rps"])
                cpu[name].append(1e6 * used / max(1.0, res["rps"] * seconds))
        off, on = statistics.median(rps["off"]), statistics.median(rps["on"])
        cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
        return {
            "rps_off": off,
            "rps_on": on,
            "ratio": on / off,
            "cpu_us_per_request_off": cpu_off,
            "cpu_us_per_request_on": cpu_on,
            "cpu_ratio_on_off": cpu_on / cpu_off,
        }
    finally:
        servers.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, short wrk runs")
    parser.add_argument("--no-proxy", action="store_true", help="skip the throughput rows")
    parser.add_argument("--json", default="", help="write results to this file")
    args = parser.parse_args()
    redis, url = start_redis()
    results: dict[str, object] = {}
    try:
        results["propagation"] = trio.run(propagation, url, 200 if args.quick else 1000)
        print("propagation  ", json.dumps(results["propagation"]))
        results["ops"] = trio.run(ops_per_probe, url, 2.0 if args.quick else 5.0)
        print("ops/probe    ", json.dumps(results["ops"]))
        results["sharding"] = trio.run(sharding, url)
        print("probes/member", json.dumps(results["sharding"]))
        if not args.no_proxy:
            if not (proxy_bench.ensure("wrk", "wrk") and proxy_bench.ensure("nginx", "nginx")):
                print("[skip] throughput: wrk and nginx are needed")
            else:
                results["throughput"] = throughput(
                    url, 3.0 if args.quick else 10.0, 1 if args.quick else 3
                )
                print("throughput   ", json.dumps(results["throughput"]))
    finally:
        redis.kill()
        redis.wait()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
