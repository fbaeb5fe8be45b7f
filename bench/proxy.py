"""Proxy benchmark: tunnel-lb vs bare trio+h11 and trio+httptools forwarders, nginx, haproxy.

One command::

    .venv/bin/python bench/proxy.py              # wrk -t1 -c50 -d10s per row
    .venv/bin/python bench/proxy.py --quick      # -d3s, for a smoke run

Every row proxies ``wrk -t1 -c50 --latency`` to the same local HTTPS backend: nginx with one
worker answering a fixed 100-byte 200 on two free loopback ports, with a certificate for
``backend.local`` issued by a throwaway trustme CA.  Every proxy sends Host and SNI
``backend.local``, verifies the certificate, keeps upstream connections alive and spreads over
the two ports.  Rows:

* ``bare``: bench/_bare_forwarder.py, the yardstick (ratios are against it);
* ``bare httptools``: bench/_bare_httptools_forwarder.py, the same forwarder parsing with
  httptools (llhttp) instead of h11: what a C parser alone buys;
* ``tunnel-lb``: lb.proxy with one load balancer, one pool, two tunnel endpoints mapped to the
  backend by ``connect_to``, a counting ``on_request_done`` hook;
* ``tunnel-lb run``, ``tunnel-lb run x2``: the whole ``tunnel-lb run`` process (metrics,
  admin, health from an unmonitored pool) with ``engine.workers: 1`` and ``2``; with 2 it
  starts its own second proxy process on the port with SO_REUSEPORT (docs/workers.md);
* ``nginx``, ``haproxy``: Debian packages as reverse proxies, one worker/thread.

wrk, nginx and haproxy are installed with apt-get when missing; a row whose program cannot be
installed is skipped with a message.  The proxy's CPU seconds per request come from
/proc/PID/stat (the process and its children).  Results go to stdout and, with ``--json``,
to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
ROWS = (
    "bare",
    "bare httptools",
    "tunnel-lb",
    "tunnel-lb run",
    "tunnel-lb run x2",
    "nginx",
    "haproxy",
)


def _free_ports(n: int) -> list[int]:
    """``n`` loopback ports the OS just handed out (held together, so all differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ports() -> list[int]:
    """Free ports for the backends and every row, chosen once by the driver and inherited by
    the processes it starts (through the environment), so nothing collides with a fixed port
    another program on this machine holds."""
    known = os.environ.get("TUNNEL_LB_BENCH_PORTS")
    if known:
        return [int(p) for p in known.split(",")]
    ports = _free_ports(2 + len(ROWS))
    os.environ["TUNNEL_LB_BENCH_PORTS"] = ",".join(map(str, ports))
    return ports


_ALL_PORTS = _ports()
BACKEND_PORTS = tuple(_ALL_PORTS[:2])
PORTS = dict(zip(ROWS, _ALL_PORTS[2:], strict=True))
HOST = "backend.local"
BODY = b"x" * 99 + b"\n"  # 100 bytes


# ---------------------------------------------------------------------- tools


_apt_updated = False


def ensure(program: str, package: str) -> bool:
    """Install ``package`` with apt-get when ``program`` is missing; False if impossible."""
    global _apt_updated
    if shutil.which(program) or Path(f"/usr/sbin/{program}").exists():
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"[skip] {program} missing and apt-get unavailable (not root?)")
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        _apt_updated = True
    print(f"[setup] apt-get install {package}")
    done = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package],
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    ok = done.returncode == 0 and (
        shutil.which(program) is not None or Path(f"/usr/sbin/{program}").exists()
    )
    if not ok:
        print(f"[skip] could not install {package}")
    return ok


def binary(program: str) -> str:
    return shutil.which(program) or f"/usr/sbin/{program}"


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # noqa: TID251 - the driver is plain sync code
    raise RuntimeError(f"nothing listens on {port}")


def warm(port: int, n: int = 50) -> None:
    """A few keep-alive requests so that pools and caches are warm; checks the answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(n):
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 or body != BODY:
            raise RuntimeError(f"port {port}: {resp.status} {body[:80]!r}")
    conn.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live children, in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(entry.name))
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass
class Row:
    name: str
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    errors: int = 0
    cpu_us_per_req: float = 0.0
    note: str = ""
    runs: list[dict[str, float]] = field(default_factory=list)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def run_wrk(port: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [
            binary("wrk"),
            "-t1",
            "-c50",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "5s",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    res: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}  # type: ignore[index]
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        res[f"p{pct}"] = float(m[1]) * _UNITS[m[2]] if m else float("nan")
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m[1])
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    res["errors"] = errors
    res["requests"] = float(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return res


# ---------------------------------------------------------------------- servers


class Servers:
    """Processes started by this script, stopped by PID at the end."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)


def make_certs(tmp: Path) -> None:
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(tmp / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    for p in tmp.iterdir():
        p.chmod(0o644)
    tmp.chmod(0o755)


def nginx_conf(tmp: Path, body: str) -> Path:
    conf = tmp / f"nginx-{abs(hash(body))}.conf"
    (tmp / "body.txt").write_bytes(BODY)
    conf.write_text(
        f"""
worker_processes 1;
user root;
daemon off;
pid {tmp}/nginx-{abs(hash(body))}.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/cbt; proxy_temp_path {tmp}/pt;
    fastcgi_temp_path {tmp}/ft; uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;
    keepalive_requests 1000000;
    {body}
}}
"""
    )
    return conf


def backend_conf(tmp: Path) -> Path:
    servers = "\n".join(
        f"""server {{
        listen 127.0.0.1:{port} ssl;
        server_name {HOST};
        ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;
        location / {{ default_type text/plain; return 200 "{BODY.decode().strip()}\\n"; }}
    }}"""
        for port in BACKEND_PORTS
    )
    return nginx_conf(tmp, servers)


def nginx_proxy_conf(tmp: Path, port: int) -> Path:
    ups = " ".join(f"server 127.0.0.1:{p};" for p in BACKEND_PORTS)
    body = f"""
    upstream backend {{ {ups} keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass https://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host {HOST};
            proxy_ssl_server_name on;
            proxy_ssl_name {HOST};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {tmp}/ca.pem;
            proxy_ssl_session_reuse on;
        }}
    }}"""
    return nginx_conf(tmp, body)


def haproxy_conf(tmp: Path, port: int) -> Path:
    conf = tmp / "haproxy.cfg"
    servers = "\n".join(
        f"    server s{i} 127.0.0.1:{p} ssl verify required ca-file {tmp}/ca.pem "
        f"sni str({HOST}) alpn http/1.1"
        for i, p in enumerate(BACKEND_PORTS)
    )
    conf.write_text(
        f"""global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    balance roundrobin
    http-request set-header Host {HOST}
{servers}
"""
    )
    return conf


# ---------------------------------------------------------------------- tunnel-lb server mode


def serve_lb(port: int, ca: str, reuse_port: bool) -> None:
    """Run tunnel-lb's proxy in this process (the benchmark starts it as a subprocess)."""
    import ssl

    import trio

    sys.path.insert(0, str(ROOT))
    from lb.config.model import Config, EngineSettings, Listener, LoadBalancer, Origin, Pool
    from lb.engine import Engine as LbEngine
    from lb.proxy import ProxyHooks, ProxyServer, open_listeners

    def tunnel(i: int) -> str:
        return f"00000000-0000-4000-8000-{i:012d}.cfargotunnel.com"

    origins = tuple(
        Origin(name=f"e{i}", address=tunnel(i), header={"Host": (HOST,)})
        for i in range(len(BACKEND_PORTS))
    )
    config = Config(
        pools=(Pool(name="p1", origins=origins),),
        load_balancers=(
            LoadBalancer(proxied=True, name="127.0.0.1", default_pools=("p1",), fallback_pool="p1"),
        ),
        connect_to={f"{tunnel(i)}:443": f"127.0.0.1:{p}" for i, p in enumerate(BACKEND_PORTS)},
        engine=EngineSettings(
            listen=(Listener(address="127.0.0.1", port=port),),
            workers=2 if reuse_port else 1,
        ),
    )
    counted = [0]

    def done(record: object) -> None:
        counted[0] += 1

    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])

    async def main() -> None:
        engine = LbEngine(config, now=trio.current_time())
        server = ProxyServer(
            engine,
            hooks=ProxyHooks(on_request_done=done),
            rng=random.Random(1),
            upstream_ssl=ctx,
        )
        listeners = await open_listeners(config.engine.listen, reuse_port=reuse_port)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.serve, listeners)

                async for _ in signals:
                    server.shutdown()
                    break
        print(f"upstream connections opened: {server.pool.opened}", file=sys.stderr)

    trio.run(main)


def run_config(tmp: Path, port: int, workers: int) -> Path:
    """A ``tunnel-lb run`` configuration equivalent to :func:`serve_lb`'s, as a file."""
    tunnels = [f"00000000-0000-4000-8000-{i:012d}.cfargotunnel.com" for i in range(2)]
    conf = tmp / f"run-{workers}.json"
    conf.write_text(
        json.dumps(
            {
                "pools": [
                    {
                        "name": "p1",
                        "origins": [
                            {"name": f"e{i}", "address": t, "header": {"Host": [HOST]}}
                            for i, t in enumerate(tunnels)
                        ],
                    }
                ],
                "load_balancers": [
                    {
                        "name": "127.0.0.1",
                        "proxied": True,
                        "default_pools": ["p1"],
                        "fallback_pool": "p1",
                    }
                ],
                "connect_to": {
                    f"{t}:443": f"127.0.0.1:{p}"
                    for t, p in zip(tunnels, BACKEND_PORTS, strict=True)
                },
                "engine": {
                    "listen": [{"address": "127.0.0.1", "port": port}],
                    "admin": f"127.0.0.1:{port + 100}",
                    "upstream_ca": str(tmp / "ca.pem"),
                    "workers": workers,
                },
            }
        )
    )
    return conf


# ---------------------------------------------------------------------- the benchmark


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="wrk seconds per run")
    parser.add_argument("--quick", action="store_true", help="3-second runs")
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--only", default="", help="comma list of rows to run")
    parser.add_argument("--json", default="", help="write results to this file")
    parser.add_argument("--serve-lb", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--ca", default="", help=argparse.SUPPRESS)
    parser.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_lb:
        serve_lb(args.serve_lb, args.ca, args.reuse_port)
        return 0
    seconds = 3.0 if args.quick else args.duration
    if args.quick:
        args.reps = 1
    only = {x.strip() for x in args.only.split(",") if x.strip()}

    def wanted(name: str) -> bool:
        return not only or name in only

    if not ensure("wrk", "wrk"):
        print("wrk is required; giving up")
        return 1
    have_nginx = ensure("nginx", "nginx-light") or ensure("nginx", "nginx")
    have_haproxy = ensure("haproxy", "haproxy")
    if not have_nginx:
        print("nginx is required for the backend; giving up")
        return 1

    servers = Servers()
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="tunnel-lb-bench-"))
    try:
        make_certs(tmp)
        backend = servers.start([binary("nginx"), "-c", str(backend_conf(tmp)), "-p", str(tmp)])
        for p in BACKEND_PORTS:
            wait_port(p)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ca = str(tmp / "ca.pem")
        plan: list[tuple[str, list[list[str]]]] = [
            (
                "bare",
                [
                    [
                        PY,
                        str(HERE / "_bare_forwarder.py"),
                        "--port",
                        str(PORTS["bare"]),
                        *[a for p in BACKEND_PORTS for a in ("--upstream", f"127.0.0.1:{p}")],
                        "--host",
                        HOST,
                        "--ca",
                        ca,
                    ]
                ],
            ),
            (
                "bare httptools",
                [
                    [
                        PY,
                        str(HERE / "_bare_httptools_forwarder.py"),
                        "--port",
                        str(PORTS["bare httptools"]),
                        *[a for p in BACKEND_PORTS for a in ("--upstream", f"127.0.0.1:{p}")],
                        "--host",
                        HOST,
                        "--ca",
                        ca,
                    ]
                ],
            ),
            ("tunnel-lb", [[PY, __file__, "--serve-lb", str(PORTS["tunnel-lb"]), "--ca", ca]]),
            (
                "tunnel-lb run",
                [[PY, "-m", "lb", "run", str(run_config(tmp, PORTS["tunnel-lb run"], 1))]],
            ),
            (
                "tunnel-lb run x2",
                [[PY, "-m", "lb", "run", str(run_config(tmp, PORTS["tunnel-lb run x2"], 2))]],
            ),
        ]
        if have_nginx:
            plan.append(
                (
                    "nginx",
                    [
                        [
                            binary("nginx"),
                            "-c",
                            str(nginx_proxy_conf(tmp, PORTS["nginx"])),
                            "-p",
                            str(tmp),
                        ]
                    ],
                )
            )
        else:
            print("[skip] nginx row")
        if have_haproxy:
            plan.append(
                ("haproxy", [[binary("haproxy"), "-f", str(haproxy_conf(tmp, PORTS["haproxy"]))]])
            )
        else:
            print("[skip] haproxy row")
        # Start every row's proxy, then measure round by round, interleaved, so that drift
        # on a shared machine hits every row alike (~10 % run to run, docs/bench.md).
        running: dict[str, list[subprocess.Popen[bytes]]] = {}
        for name, argvs in plan:
            if not wanted(name):
                continue
            procs = [servers.start(argv, env=env) for argv in argvs]
            try:
                wait_port(PORTS[name])
                time.sleep(0.3)  # noqa: TID251 - the driver is plain sync code
                warm(PORTS[name])
            except Exception as exc:
                for p in procs:
                    servers.stop(p)
                err = b"".join(p.stderr.read() if p.stderr else b"" for p in procs)
                print(f"[fail] {name}: {exc} {err.decode(errors='replace')[-500:]}")
                continue
            running[name] = procs
        results: dict[str, Row] = {name: Row(name) for name in running}
        for rep in range(args.reps):
            for name, procs in running.items():
                pids = [p.pid for p in procs]
                before = sum(cpu_seconds(p) for p in pids)
                res = run_wrk(PORTS[name], seconds)
                used = sum(cpu_seconds(p) for p in pids) - before
                res["cpu_us"] = used / max(res["requests"], 1) * 1e6
                results[name].runs.append(res)
                print(
                    f"  round {rep + 1} {name:14} {res['rps']:9.0f} req/s  p50 {res['p50']:6.2f} ms"
                    f"  p99 {res['p99']:6.2f} ms  cpu {res['cpu_us']:6.1f} us/req"
                    f"  errors {res['errors']:.0f}",
                    flush=True,
                )
        for name, row in results.items():
            runs = sorted(row.runs, key=lambda r: r["rps"])
            mid = runs[len(runs) // 2]
            row.rps, row.p50_ms, row.p99_ms = mid["rps"], mid["p50"], mid["p99"]
            row.errors = int(sum(r["errors"] for r in row.runs))
            row.cpu_us_per_req = sorted(r["cpu_us"] for r in row.runs)[len(runs) // 2]
            if name == "tunnel-lb run x2":
                row.note = "engine.workers: 2 (SO_REUSEPORT)"
            rows.append(row)
        for procs in running.values():
            for p in procs:
                servers.stop(p)
        servers.stop(backend)
    finally:
        servers.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    base = next((r for r in rows if r.name == "bare"), None)
    print()
    print(
        f"wrk -t1 -c50 -d{seconds:g}s --latency, median of {args.reps} interleaved rounds; "
        f"{os.cpu_count()} CPUs shared by wrk, proxy and backend"
    )
    print("| proxy | req/s | p50 ms | p99 ms | CPU µs/req | rps vs bare | p99 vs bare | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rr = f"{r.rps / base.rps:.2f}" if base and base.rps else "-"
        pr = f"{r.p99_ms / base.p99_ms:.2f}" if base and base.p99_ms else "-"
        cells = [r.name, f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}"]
        cells += [f"{r.cpu_us_per_req:.1f}", rr, pr, str(r.errors)]
        print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
