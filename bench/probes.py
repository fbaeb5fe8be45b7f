"""Probe cost: the monitors package against a bare trio+h11 prober and httpx, in one run.

Run: ``.venv/bin/python bench/probes.py`` (about 1.5 minutes; ``--quick`` for a smoke run).

Set-up: one HTTPS server process on 127.0.0.1 (trio, a hand-rolled fixed response: cheaper
than any client, so the client is what we measure) with a trustme certificate for
``*.bench.test``; N virtual hosts ``e<i>.bench.test``, each probed with its own Host and SNI
over keep-alive, the certificate verified.  Each client variant runs in its own process:

* ``monitors``: the real thing: ``plan`` -> ``Scheduler`` -> ``NetworkTransport`` (spread,
  jitter, timeouts, judging, ``connect_to``), results counted in ``on_result``;
* ``bare``: the floor: one task per endpoint, trio ``SSLStream`` + h11, keep-alive, no
  timeouts, no judging, no error handling;
* ``httpx``: one ``httpx.AsyncClient`` per endpoint with a pool of one keep-alive connection
  (the best httpx layout we found, docs/monitors.md), sharing one SSL context.

Two phases per variant:

1. **throughput**: 200 endpoints at an offered 4,000 probes/s; probes per CPU-second of the
   prober process (``time.process_time``) and the achieved rate.
2. **scale**: 10,000 endpoints, interval 10 s = 1,000 probes/s.  The first interval opens the
   10,000 TLS connections; lateness (actual - planned start), CPU per probe and the achieved
   rate are measured over the next interval; RSS growth / N is the memory per endpoint with
   every connection open.

The parent prints one table and the ratios to the bare prober.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------- server


async def serve(cert: str, key: str, port_file: str) -> None:
    """A fast fixed-answer HTTPS/1.1 keep-alive server; writes its port to ``port_file``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def handle(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, ctx, server_side=True)
        buf = b""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                buf += data
                while b"\r\n\r\n" in buf:
                    _, buf = buf.split(b"\r\n\r\n", 1)
                    await stream.send_all(RESPONSE)
        tcp.socket.close()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
    await trio.Path(port_file).write_text(str(listeners[0].socket.getsockname()[1]))
    await trio.serve_listeners(handle, listeners)


# ---------------------------------------------------------------------------- clients


class Stats:
    """Counts probes and lateness inside the measured window only."""

    def __init__(self) -> None:
        self.measuring = False
        self.probes = 0
        self.failures = 0
        self.reasons: dict[str, int] = {}
        self.lateness: list[float] = []

    def late(self, seconds: float) -> None:
        if self.measuring:
            self.lateness.append(seconds)

    def done(self, ok: bool, reason: str = "") -> None:
        if self.measuring:
            self.probes += 1
            self.failures += not ok
            if reason:
                self.reasons[reason] = self.reasons.get(reason, 0) + 1


def host(i: int) -> str:
    return f"e{i}.bench.test"


async def run_monitors(
    ctx: ssl.SSLContext,
    port: int,
    n: int,
    interval: float,
    ramp: float,
    stats: Stats,
    nursery: trio.Nursery,
) -> None:
    from lb.config.model import Monitor, Origin
    from lb.core.book import ProbeTarget
    from monitors import NetworkTransport, Scheduler, plan

    m = Monitor(id="m", type="https", interval=interval, timeout=5, retries=0)
    targets = [
        ProbeTarget(
            pool="bench",
            endpoint=f"e{i}",
            origin=Origin(name=f"e{i}", address=host(i)),
            monitor=m,
            pool_id="bench",
        )
        for i in range(n)
    ]
    jobs = plan(targets, connect_to={f"{host(i)}:443": f"127.0.0.1:{port}" for i in range(n)})
    scheduler = Scheduler(
        NetworkTransport(ssl_context=ctx, reuse=3600.0),  # keep-alive, as docs/bench.md measures
        lambda r: stats.done(r.ok, r.reason),
        rng=random.Random(1),
        on_late=stats.late,
        first_round_rate=ramp or None,
    )
    scheduler.update(jobs)
    await nursery.start(scheduler.run)


def _spread(
    nursery: trio.Nursery,
    endpoint: Callable[[int, float], Awaitable[None]],
    n: int,
    interval: float,
    ramp: float,
) -> None:
    """Start the baselines' endpoint loops at random offsets over the first round, as the
    monitors' scheduler does (its ramp included), with a fixed seed."""
    rng = random.Random(1)
    now, window = trio.current_time(), max(interval, n / ramp if ramp else 0.0)
    for i in range(n):
        nursery.start_soon(endpoint, i, now + rng.random() * window)


async def run_bare(
    ctx: ssl.SSLContext,
    port: int,
    n: int,
    interval: float,
    ramp: float,
    stats: Stats,
    nursery: trio.Nursery,
) -> None:
    import h11

    async def endpoint(i: int, at: float) -> None:
        name = host(i)
        await trio.sleep_until(at)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, ctx, server_hostname=name, https_compatible=True)
        conn = h11.Connection(h11.CLIENT)
        try:
            while True:
                await trio.sleep_until(at)
                stats.late(trio.current_time() - at)
                data = conn.send(
                    h11.Request(
                        method="GET", target="/", headers=[("Host", name), ("User-Agent", "bare")]
                    )
                )
                await stream.send_all((data or b"") + (conn.send(h11.EndOfMessage()) or b""))
                status = 0
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(16384))
                    elif isinstance(ev, h11.Response):
                        status = ev.status_code
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                conn.start_next_cycle()
                stats.done(status == 200)
                at += interval
        finally:
            tcp.socket.close()

    _spread(nursery, endpoint, n, interval, ramp)


async def run_httpx(
    ctx: ssl.SSLContext,
    port: int,
    n: int,
    interval: float,
    ramp: float,
    stats: Stats,
    nursery: trio.Nursery,
) -> None:
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def endpoint(i: int, at: float) -> None:
        name = host(i)
        async with httpx.AsyncClient(verify=ctx, limits=limits, timeout=5) as client:
            while True:
                await trio.sleep_until(at)
                stats.late(trio.current_time() - at)
                r = await client.get(
                    f"https://127.0.0.1:{port}/",
                    headers={"Host": name},
                    extensions={"sni_hostname": name},
                )
                stats.done(r.status_code == 200)
                at += interval

    _spread(nursery, endpoint, n, interval, ramp)


VARIANTS: dict[str, Callable[..., Any]] = {
    "monitors": run_monitors,
    "bare": run_bare,
    "httpx": run_httpx,
}


async def client(args: argparse.Namespace) -> dict[str, Any]:
    """One variant, one phase, in this process: warm up one interval, then measure."""
    raise_fd_limit()
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    import h11  # noqa: F401 - imported before the baseline, as every variant uses it
    import httpx  # noqa: F401

    from monitors import NetworkTransport  # noqa: F401

    base = rss_bytes()
    stats = Stats()
    async with trio.open_nursery() as nursery:
        await VARIANTS[args.variant](
            ctx, args.port, args.n, args.interval, args.ramp, stats, nursery
        )
        await trio.sleep(args.warmup)
        stats.measuring = True
        cpu0, t0 = time.process_time(), trio.current_time()
        await trio.sleep(args.measure)
        cpu, wall = time.process_time() - cpu0, trio.current_time() - t0
        stats.measuring = False
        rss = rss_bytes() - base
        nursery.cancel_scope.cancel()
    late = sorted(stats.lateness) or [0.0]
    return {
        "probes": stats.probes,
        "failures": stats.failures,
        "reasons": stats.reasons,
        "rate": stats.probes / wall,
        "cpu_ms_per_probe": 1000 * cpu / max(1, stats.probes),
        "probes_per_cpu_s": stats.probes / cpu if cpu else 0.0,
        "cpu_util": cpu / wall,
        "late_p50_ms": 1000 * statistics.median(late),
        "late_p99_ms": 1000 * late[min(len(late) - 1, int(0.99 * len(late)))],
        "late_max_ms": 1000 * late[-1],
        "rss_kb_per_endpoint": rss / 1024 / args.n,
    }


# ---------------------------------------------------------------------------- parent


def spawn_client(
    variant: str,
    port: int,
    ca: str,
    n: int,
    interval: float,
    warmup: float,
    measure: float,
    ramp: float,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(HERE),
        "--client",
        variant,
        "--port",
        str(port),
        "--ca",
        ca,
        "--n",
        str(n),
        "--interval",
        str(interval),
        "--warmup",
        str(warmup),
        "--measure",
        str(measure),
        "--ramp",
        str(ramp),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, short phases")
    parser.add_argument("--variants", default="monitors,bare,httpx")
    parser.add_argument("--scale-n", type=int, default=0, help="endpoints in the scale phase")
    parser.add_argument(
        "--serve", nargs=3, metavar=("CERT", "KEY", "PORTFILE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--ca")
    parser.add_argument("--n", type=int)
    parser.add_argument("--interval", type=float)
    parser.add_argument("--warmup", type=float)
    parser.add_argument("--measure", type=float)
    parser.add_argument("--ramp", type=float, default=0.0)
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent.parent))
    if args.serve:
        raise_fd_limit()
        trio.run(serve, *args.serve)
        return
    if args.client:
        args.variant = args.client
        print(json.dumps(trio.run(client, args)))
        return

    import trustme

    quick = args.quick
    n_memory = args.scale_n or (1000 if quick else 10_000)
    ramp = 500.0  # first checks per second: a new TLS connection costs ~1 CPU-ms
    measure = 2.0 if quick else 4.0
    phases: dict[str, dict[str, float]] = {
        # saturation: how many probes one CPU-second buys
        "throughput": {"n": 200, "interval": 0.05, "warmup": 1.0, "measure": measure},
        # 1,000 probes/s steady: lateness of probe starts
        # (the first round opens 2,000 connections over 4 s; measured after it settled)
        "rate": {"n": 2000, "interval": 2.0, "warmup": 9.0, "measure": measure, "ramp": ramp},
        # 10,000 endpoints, every TLS connection open: memory per endpoint
        "memory": {
            "n": n_memory,
            "interval": n_memory / ramp,
            "warmup": n_memory / ramp + 1,
            "measure": 3.0,
        },
    }
    phases["throughput"]["ramp"] = 0.0
    phases["memory"]["ramp"] = ramp
    variants = args.variants.split(",")
    runs = [(phase, v) for phase in ("throughput", "rate") for v in variants]
    runs += [("memory", v) for v in variants if v != "httpx"]  # httpx: memory from "rate"
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("*.bench.test")
        paths = {k: str(Path(tmp, k)) for k in ("ca.pem", "cert.pem", "key.pem")}
        ca.cert_pem.write_to_path(paths["ca.pem"])
        cert.cert_chain_pems[0].write_to_path(paths["cert.pem"])
        cert.private_key_pem.write_to_path(paths["key.pem"])
        for i, (phase, v) in enumerate(runs):
            # A fresh server (and port) per run: 10,000 client sockets in TIME_WAIT from the
            # previous run would otherwise exhaust the ephemeral ports towards one address.
            port_file = Path(tmp, f"port{i}")
            server = subprocess.Popen(
                [
                    sys.executable,
                    str(HERE),
                    "--serve",
                    paths["cert.pem"],
                    paths["key.pem"],
                    str(port_file),
                ]
            )
            try:
                for _ in range(200):
                    if port_file.exists() and port_file.read_text():
                        break
                    time.sleep(0.05)  # noqa: TID251 - the parent is plain synchronous code
                started = time.monotonic()
                port = int(port_file.read_text())
                r = spawn_client(v, port, paths["ca.pem"], **phases[phase])
                results.setdefault(phase, {})[v] = r
                print(
                    f"  {phase:<11} {v:<8} {time.monotonic() - started:4.1f}s: {r['probes']}"
                    f" probes, {r['failures']} failed {r['reasons'] or ''}",
                    file=sys.stderr,
                )
            finally:
                server.terminate()
                server.wait()
    report(results, phases, variants)


def report(
    results: dict[str, dict[str, dict[str, Any]]],
    phases: dict[str, dict[str, float]],
    variants: list[str],
) -> None:
    """One table per phase, then the ratios to the bare prober."""
    for phase, rows in results.items():
        p = phases[phase]
        print(
            f"\n{phase}: {p['n']:,.0f} endpoints every {p['interval']:g} s = offered "
            f"{p['n'] / p['interval']:,.0f} probes/s, measured over {p['measure']:g} s"
        )
        print(
            f"  {'variant':<9} {'probes/s':>9} {'CPU ms':>7} {'probes/CPU-s':>12} "
            f"{'late p50':>9} {'late p99':>9} {'late max':>9} {'KB/endpoint':>11} {'failed':>6}"
        )
        for v, r in rows.items():
            print(
                f"  {v:<9} {r['rate']:>9,.0f} {r['cpu_ms_per_probe']:>7.3f} "
                f"{r['probes_per_cpu_s']:>12,.0f} {r['late_p50_ms']:>7.1f}ms "
                f"{r['late_p99_ms']:>7.1f}ms {r['late_max_ms']:>7.0f}ms "
                f"{r['rss_kb_per_endpoint']:>11.1f} {r['failures']:>6}"
            )
    if "bare" not in variants:
        return
    print("\nratio to bare: CPU per probe (throughput, rate); memory per endpoint (memory/rate):")
    for v in variants:
        if v == "bare":
            continue
        t, r = results["throughput"], results["rate"]
        m = results["memory"] if v in results.get("memory", {}) else r
        print(
            f"  {v:<9} CPU x{t[v]['cpu_ms_per_probe'] / t['bare']['cpu_ms_per_probe']:.2f}, "
            f"x{r[v]['cpu_ms_per_probe'] / r['bare']['cpu_ms_per_probe']:.2f}; memory "
            f"x{m[v]['rss_kb_per_endpoint'] / max(0.1, m['bare']['rss_kb_per_endpoint']):.2f}"
        )


if __name__ == "__main__":
    main()
