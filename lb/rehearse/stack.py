"""The real system of a rehearsal: a connector per replica and ``tunnel-lb run``, on loopback.

A stand-in plays one replica of its endpoint with the scenario's ingress rules, and closes
connections as the scenario's ``network.keep_alive`` says (``keep_alive_idle``,
``keep_alive_announce``, ``random_closes`` of docs/connector.md).  A tunnel with several
replicas gets one stand-in per replica and an edge stand-in in front of them
(:mod:`lb.rehearse.edge`), which picks the replica for each request as the simulator does.

Every process is started as a user would start it (``python -m lb connector`` and ``python
-m lb run``), on free ports only: the connectors print their HTTPS and control URLs, the LB
logs its ``ready`` line with the ports it bound.  The LB's configuration is the scaled one
(:mod:`lb.rehearse.scale`) plus what running it on one machine needs, nothing else:

* ``connect_to``: each endpoint's ``address:443`` dials its stand-in (or its edge);
* ``engine.upstream_ca``: the throw-away trustme CA that signed the stand-ins' certificates;
* ``engine.trusted_proxies: [127.0.0.1/32]``: the traffic driver states each request's entry
  data center the way Cloudflare's edge does, with ``CF-Ray: <id>-<DC>`` and the client's
  address with ``CF-Connecting-IP`` (docs/proxy.md, "Request path");
* ``engine.access_log: true``: one line per request, with its id, attempts and status.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from lb.children import reap, stop
from lb.rehearse.edge import ANSWERED
from lb.rehearse.stalls import Snapshot, cpu_times, probe_timeouts
from lb.sim.scenario import ORIGIN_SERVICE, Replica, Scenario

__all__ = ["Stack", "StartError", "running"]

READY_WAIT = 30.0
"""Seconds a process may take to report its ports."""
STOP_GRACE = 5.0
"""Seconds the processes get to exit on SIGTERM when the stack stops, before SIGKILL."""


class StartError(RuntimeError):
    """A process of the stack did not start (one line, with where its log is)."""


@dataclass
class Stack:
    """The running processes and where to reach them."""

    proxy: str
    admin: str
    control: dict[str, str]
    """Endpoint address -> the control URL of its stand-in (``.../faults``); for a tunnel
    with several replicas, of its edge stand-in (:mod:`lb.rehearse.edge`)."""
    anchor: float
    """``time.monotonic()`` when the LB's probe schedule started (its ``monitors_started``
    line): the time 0 of the real run, as the simulator's scheduler starts at its time 0."""
    config_path: Path
    raw_config: dict[str, Any]
    log: Path
    processes: list[trio.Process] = field(default_factory=list)
    replica_control: dict[tuple[str, str], str] = field(default_factory=dict)
    """(address, replica name) -> the control URL of that replica's connector, for tunnels
    with several replicas (an edge stand-in in front)."""
    stats: list[str] = field(default_factory=list)
    """The control URLs of every connector (each counts the probes it receives)."""
    edges: dict[str, EdgeProcess] = field(default_factory=dict)
    """Address -> the edge stand-in of a tunnel with several replicas."""
    standins: dict[str, list[int]] = field(default_factory=dict)
    """Address -> the pids of its stand-ins (connectors, and the edge in front of them)."""
    lb_pid: int = 0
    """The LB's pid."""

    async def answered(self) -> dict[str, str]:
        """Request id -> the label of the replica an edge stand-in sent it to (every edge)."""
        out: dict[str, str] = {}
        for edge in self.edges.values():
            out.update(await edge.answered())
        return out

    async def reload(self, client: httpx.AsyncClient, raw: dict[str, Any]) -> None:
        """Write ``raw`` (the scenario's configuration changed) and reload it for real."""
        self.raw_config = raw
        self.config_path.write_text(json.dumps(raw, indent=1), "utf-8")
        r = await client.post(f"{self.admin}/reload", headers={"X-Tunnel-LB": "1"})
        if r.status_code != 200:
            raise StartError(f"POST /reload answered {r.status_code}: {r.text.strip()}")

    async def probe_duration(self, client: httpx.AsyncClient) -> float:
        """How long the LB's slowest probe so far took, to its ``lb_probe_duration_seconds``
        bucket (0 without probes): the real round trip, first TLS handshakes included,
        which the scaled simulation does not have."""
        r = await client.get(f"{self.admin}/metrics")
        return slowest_bucket(r.text, "lb_probe_duration_seconds")

    async def probe_timeouts(self, client: httpx.AsyncClient) -> dict[str, int]:
        """``pool/endpoint`` -> the LB's checks so far that timed out (its
        ``lb_probes_total``; :mod:`lb.rehearse.stalls` says what they tell)."""
        r = await client.get(f"{self.admin}/metrics")
        return probe_timeouts(r.text)

    def cpu(self) -> dict[int, Snapshot]:
        """Each of the stack's processes (by pid) -> how long its threads have run and
        waited for a CPU so far (:func:`lb.rehearse.stalls.cpu_times`, a cheap read of
        ``/proc``; empty snapshots where the kernel does not say)."""
        return {p.pid: cpu_times([p.pid]) for p in self.processes}

    def path(self, sc: Scenario, endpoint: str) -> list[int]:
        """The pids on the path of a probe or a request to ``pool/endpoint``: the LB and
        the stand-ins of that endpoint's address."""
        pool, _, name = endpoint.partition("/")
        addresses = {
            o.address.lower().rstrip(".")
            for p in sc.config.pools
            if p.name == pool
            for o in p.origins
            if o.name == name
        }
        return [self.lb_pid, *(pid for a in sorted(addresses) for pid in self.standins.get(a, []))]

    async def probes(self, client: httpx.AsyncClient) -> int:
        """Probe requests the stand-ins have received so far (their ``GET /stats``)."""
        total = 0
        for url in self.stats:
            r = await client.get(url.removesuffix("/faults") + "/stats")
            total += int(r.json()["probes"])
        return total


_LE = re.compile(r'le="([^"]*)",?')


def slowest_bucket(text: str, family: str) -> float:
    """The upper bound of the highest non-empty bucket of a histogram ``family`` in a
    Prometheus text exposition, over all its series (0 when it has no observation; the
    largest finite bound when one fell above every bound)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if not head.startswith(family + "_bucket{"):
            continue
        found = _LE.search(head)
        if found is None:
            continue
        labels = head[: found.start()] + head[found.end() :]
        series.setdefault(labels, []).append((float(found.group(1)), float(value)))
    out = 0.0
    for buckets in series.values():
        buckets.sort()
        total = buckets[-1][1]
        finite = [b for b, _ in buckets if b != float("inf")]
        if total:
            bound = next(b for b, n in buckets if n >= total)
            out = max(out, bound if bound != float("inf") else max(finite, default=0.0))
    return out


def _ingress(sc: Scenario, address: str) -> list[dict[str, str]]:
    """The stand-in's rules: the scenario's, else everything to the application.

    ``hello_world`` plays the application (``origin:`` faults hit it,
    :mod:`lb.connector.faults`); a scenario's own ``hello_world`` rule, which the simulator
    answers 200 without asking the application, becomes ``http_status:200``.
    """
    rules = sc.ingress.get(address)
    if rules is None:
        return [{"service": "hello_world"}]
    out = []
    for r in rules:
        service = r.service
        if service == "hello_world":
            service = "http_status:200"
        elif service == f"http://{ORIGIN_SERVICE}":
            service = "hello_world"
        rule = {"service": service}
        if r.hostname:
            rule["hostname"] = r.hostname
        if r.path:
            rule["path"] = r.path
        out.append(rule)
    return out


def _keep_alive(sc: Scenario, address: str) -> dict[str, object]:
    """The stand-in's connection closes, from the scenario's ``network.keep_alive``."""
    spec = sc.keep_alive.get(address)
    if spec is None:
        return {}
    out: dict[str, object] = {"random_closes": spec.random}
    if spec.idle != float("inf"):
        out.update(keep_alive_idle=spec.idle, keep_alive_announce=spec.announce)
    return out


def _connector(sc: Scenario, address: str, replica: Replica, cert: Path) -> dict[str, Any]:
    """The configuration of one replica's connector (every replica has the tunnel's rules)."""
    tunnel = address.split(".", 1)[0] if address.endswith(".cfargotunnel.com") else ""
    return {
        "tunnel": tunnel or "00000000-0000-4000-8000-000000000000",
        "replica": replica.name or "endpoint",
        "listen": "127.0.0.1:0",
        "certificate": str(cert),
        "key": str(cert),
        "ingress": _ingress(sc, address),
        **_keep_alive(sc, address),
    }


@dataclass
class EdgeProcess:
    """An edge stand-in (:mod:`lb.rehearse.edge`) running as a process of its own: the
    traffic driver's process then keeps its schedule on a loaded machine, and the LB's
    probes through the edge are not held up by the traffic (``docs/rehearse.md``)."""

    process: trio.Process
    lines: _Lines

    async def answered(self) -> dict[str, str]:
        """Request id -> the label of the replica this edge sent it to, so far."""
        assert self.process.stdin is not None
        line = None
        with trio.move_on_after(READY_WAIT):
            try:
                await self.process.stdin.send_all(ANSWERED)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # it has exited: no line comes
            else:
                line = await self.lines.next()
        if line is None:
            raise StartError("an edge stand-in exited or hung before the end of the rehearsal")
        answered: dict[str, str] = json.loads(line)
        return answered


def _names(sc: Scenario) -> list[str]:
    """Every name the LB may verify a stand-in's certificate against."""
    names = {"localhost", "127.0.0.1"}
    for p in sc.config.pools:
        for o in p.origins:
            names.add(o.address.lower().rstrip("."))
            names.add(o.host_header or "")
    names.update(m.host_header or "" for m in sc.config.monitors)
    names.update(lb.name for lb in sc.config.load_balancers)
    return sorted(n for n in names if n)


class _Lines:
    """Lines of a process's output (no async generator: nothing left to finalise)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""

    async def next(self) -> str | None:
        """The next line, or None at the end of the stream."""
        while b"\n" not in self._buf:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")


@asynccontextmanager
async def running(
    sc: Scenario, raw_config: dict[str, Any], directory: Path, *, seed: int
) -> AsyncIterator[Stack]:
    """Start the stand-ins and the LB; stop every process on exit."""
    try:
        import trustme  # optional: the `demo` extra, as for `tunnel-lb demo`
    except ImportError:
        raise StartError("rehearse needs `trustme`: pip install 'tunnel-lb[demo]'") from None
    ca = trustme.CA()
    cert = directory / "standin.pem"
    ca.issue_cert(*_names(sc)).private_key_and_cert_chain_pem.write_to_path(str(cert))
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    log = directory / "processes.log"
    lb_log = directory / "lb.log"
    processes: list[trio.Process] = []
    async with _pipes_closed(processes), trio.open_nursery() as nursery:
        try:
            control: dict[str, str] = {}
            replica_control: dict[tuple[str, str], str] = {}
            connect_to: dict[str, str] = {}
            warm: list[str] = []
            edges: dict[str, EdgeProcess] = {}
            n = 0
            standins: dict[str, list[int]] = {}
            for address in sorted(sc.replicas):
                replicas = sc.replicas[address]
                first = len(processes)
                upstreams: list[tuple[str, str]] = []
                for replica in replicas:
                    path = directory / f"connector-{n}.json"
                    n += 1
                    path.write_text(json.dumps(_connector(sc, address, replica, cert)), "utf-8")
                    cmd = ["connector", "--quiet", "--control", "127.0.0.1:0", str(path)]
                    https, ctl = await _start_connector(nursery, cmd, log, processes)
                    upstreams.append((replica.name, https.removeprefix("https://")))
                    replica_control[(address, replica.name)] = ctl
                    warm.append(upstreams[-1][1])
                standins[address] = [p.pid for p in processes[first:]]
                if len(upstreams) == 1:
                    connect_to[f"{address}:443"] = upstreams[0][1]
                    control[address] = replica_control.pop((address, replicas[0].name))
                    continue
                path = directory / f"edge-{len(edges)}.json"
                spec = {
                    "scenario": sc.file,
                    "address": address,
                    "upstreams": upstreams,
                    "cert": str(cert),
                    "ca": str(ca_file),
                    "seed": f"{seed}:edge:{address}",
                }
                path.write_text(json.dumps(spec), "utf-8")
                edge, at, control[address] = await _start_edge(path, log, processes)
                connect_to[f"{address}:443"] = at
                edges[address] = edge
                standins[address] = [p.pid for p in processes[first:]]
                warm += [at] * len(upstreams)  # one exchange per replica behind it
            await _warm(warm, ca_file)
            raw = copy.deepcopy(raw_config)
            raw["connect_to"] = {**raw.get("connect_to", {}), **connect_to}
            engine = raw.setdefault("engine", {})
            engine.update(
                upstream_ca=str(ca_file),
                trusted_proxies=["127.0.0.1/32"],
                access_log=True,
            )
            config_path = directory / "lb.json"
            config_path.write_text(json.dumps(raw, indent=1), "utf-8")
            args = ["run", str(config_path), "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
            args += ["--seed", str(seed), "--log-format", "json"]
            ready, anchor = await _start_lb(args, lb_log, processes)
            stack = Stack(
                proxy=f"http://{ready['proxy'][0]}",
                admin=f"http://{ready['admin']}",
                control=control,
                anchor=anchor,
                config_path=config_path,
                raw_config=raw,
                log=lb_log,
                processes=processes,
                replica_control=replica_control,
                stats=[
                    *(url for a, url in control.items() if a not in edges),
                    *replica_control.values(),
                ],
                edges=edges,
                standins=standins,
                lb_pid=processes[-1].pid,
            )
            yield stack
        finally:
            # Every path, a failed or cancelled start included: each process the stack
            # started is in `processes` from the moment it exists, and ends here for good.
            await stop(*processes, grace=STOP_GRACE)
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def _pipes_closed(processes: list[trio.Process]) -> AsyncIterator[None]:
    """On exit, close our ends of the pipes of every process in ``processes`` (stopped by
    then, and the tasks reading them done): nothing is left for the garbage collector."""
    try:
        yield
    finally:
        for p in processes:
            for pipe in (p.stdin, p.stdout, p.stderr):
                if pipe is not None:
                    await trio.aclose_forcefully(pipe)


async def _start_connector(
    nursery: trio.Nursery, args: list[str], log: Path, processes: list[trio.Process]
) -> tuple[str, str]:
    """Start a connector (added to ``processes`` at once, for the caller to stop); its
    HTTPS and control URLs once it prints them."""
    with log.open("ab") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "lb", *args], stdout=-1, stderr=err
        )
    processes.append(proc)
    assert proc.stdout is not None
    https = control = ""
    lines = _Lines(proc.stdout)
    with trio.move_on_after(READY_WAIT):
        while (line := await lines.next()) is not None:
            if line.startswith("tunnel ") and ": https://" in line:
                https = line.rsplit(": ", 1)[1]
            elif line.startswith("control: "):
                control = line.removeprefix("control: ")
            if https and control:
                break
    if not (https and control):
        await reap(proc)
        raise StartError(f"a connector did not start; see {log}")
    nursery.start_soon(_drain, lines)
    return https, control


_EDGE = "import sys; from lb.rehearse.edge import main; sys.exit(main(sys.argv[1:]))"


async def _start_edge(
    spec: Path, log: Path, processes: list[trio.Process]
) -> tuple[EdgeProcess, str, str]:
    """Start an edge stand-in's process (added to ``processes`` at once, for the caller to
    stop); it, its address and its control URL once it prints them."""
    with log.open("ab") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", _EDGE, str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    processes.append(proc)
    assert proc.stdout is not None
    at = control = ""
    lines = _Lines(proc.stdout)
    with trio.move_on_after(READY_WAIT):
        while (line := await lines.next()) is not None:
            if line.startswith("edge: "):
                at = line.removeprefix("edge: ")
            elif line.startswith("control: "):
                control = line.removeprefix("control: ")
            if at and control:
                break
    if not (at and control):
        await reap(proc)
        raise StartError(f"an edge stand-in did not start; see {log}")
    return EdgeProcess(proc, lines), at, control


async def _warm(addresses: Iterable[str], ca_file: Path) -> None:
    """One TLS exchange with each stand-in before the LB starts: a real tunnel has served
    before, and a stand-in's first exchange (lazy imports, first handshake) must not make
    the LB's first probe, whose timeout is scaled, time out on a busy machine."""
    context = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(verify=context, timeout=READY_WAIT) as client:
        for address in addresses:
            try:
                await client.get(f"https://{address}/", headers={"host": "localhost"})
            except httpx.HTTPError as exc:
                raise StartError(f"the stand-in at {address} did not answer: {exc}") from None


async def _drain(lines: _Lines) -> None:
    while await lines.next() is not None:
        pass


async def _start_lb(
    args: list[str], log: Path, processes: list[trio.Process]
) -> tuple[dict[str, Any], float]:
    """Start ``tunnel-lb run`` (added to ``processes`` at once, for the caller to stop); its
    ``ready`` line, and the ``mono`` of its ``monitors_started`` line (which comes first)."""
    with log.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "lb", *args], stdout=err, stderr=err
        )
    processes.append(proc)
    with trio.move_on_after(READY_WAIT):
        while proc.returncode is None and proc.poll() is None:
            text = await trio.Path(log).read_text("utf-8", "replace")
            anchor = None
            for line in text.splitlines():
                if '"event":"monitors_started"' in line:
                    anchor = float(json.loads(line)["mono"])
                if '"event":"ready"' in line and anchor is not None:
                    ready: dict[str, Any] = json.loads(line)
                    return ready, anchor
            await trio.sleep(0.02)
    await reap(proc)
    text = await trio.Path(log).read_text("utf-8", "replace")
    tail = text.strip().splitlines()[-1:] or ["(no output)"]
    raise StartError(f"tunnel-lb run did not become ready: {tail[0]} (log: {log})")
