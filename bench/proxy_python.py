"""The proxy's own Python cost per request, without sockets, TLS or a load generator.

``bench/proxy.py`` measures the whole system, where a run moves by ±20 µs per request on
this machine: too coarse to tell a 2 µs change.  This one drives the same code over
trio's in-memory streams (a client, the proxy's ``serve_client``, a stand-in upstream that
answers every request with nginx's 100-byte answer), next to the bare httptools forwarder
(bench/_bare_httptools_forwarder.py) over the same streams, so that what differs is only
the Python each runs per request.  Two measures:

* CPU µs per request (``time.process_time``), the best of ``--rounds``;
* with ``--callgrind``, instructions per request counted by valgrind, the same to 0.2 % run
  to run whatever else the machine does: the one to judge a small change by (for a change
  under 0.3 %, the median of three runs each);
* with ``--steps``, what each request asks of trio's scheduler, counted (the same every
  run): task steps, tasks spawned and rescheduled (a trio ``Instrument``), and the calls to
  checkpoints, cancel scopes and stream conflict detectors, with every Python call
  (cProfile, coroutine resumptions included).

    .venv/bin/python bench/proxy_python.py                 # CPU, best of 5 rounds
    .venv/bin/python bench/proxy_python.py --callgrind     # instructions (about a minute)
    .venv/bin/python bench/proxy_python.py --steps         # scheduler steps and calls
    .venv/bin/python bench/proxy_python.py --loaded        # a third row, see LOADED

The upstream side is patched in: ``UpstreamPool._dial`` returns one end of a memory stream
pair.  Everything above it (the pool's checkout and release, steering, records, the
parser, the watchdog's deadline moves) is the production code.  Left out: the watch loop
(one task per proxy, not per request), and the pool's staleness ``poll`` (a memory stream
has no socket to poll; ``bench/proxy.py`` pays it).  valgrind is installed with apt-get when
``--callgrind`` needs it.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import itertools
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 20:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    + b"x" * 99
    + b"\n"
)
"""What the bench backend (nginx) answers, byte for byte but the date."""
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
"""What wrk sends."""

Serve = Callable[[trio.abc.Stream], Awaitable[None]]


async def _upstream(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some(65536):
        await stream.send_all(ANSWER * data.count(b"\r\n\r\n"))


def _pair() -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """Two connected streams: trio's in-memory ones, or with ``--sockets`` a socket pair."""
    if not SOCKETS:
        return trio.testing.memory_stream_pair()
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


SOCKETS = "--sockets" in sys.argv
"""Connect client, proxy and upstream with socket pairs instead of memory streams (their
receives then wait in epoll, as in production, and their sends are system calls)."""


async def _dial(nursery: trio.Nursery) -> trio.abc.Stream:
    ours, theirs = _pair()
    nursery.start_soon(_upstream, theirs)
    return ours


def _tunnel_lb(nursery: trio.Nursery) -> Serve:
    """``serve_client`` of a proxy configured as bench/proxy.py's ``tunnel-lb`` row."""
    from lb.config.model import Config, EngineSettings, LoadBalancer, Origin, Pool
    from lb.engine import Engine
    from lb.proxy import ProxyServer
    from lb.proxy.connection import serve_client
    from lb.proxy.state import Client
    from lb.proxy.upstream import Target, UpstreamPool

    def tunnel(i: int) -> str:
        return f"00000000-0000-4000-8000-{i:012d}.cfargotunnel.com"

    origins = tuple(
        Origin(name=f"e{i}", address=tunnel(i), header={"Host": ("backend.local",)})
        for i in range(2)
    )
    config = Config(
        pools=(Pool(name="p1", origins=origins),),
        load_balancers=(
            LoadBalancer(proxied=True, name="127.0.0.1", default_pools=("p1",), fallback_pool="p1"),
        ),
        connect_to={f"{tunnel(i)}:443": f"127.0.0.1:{1000 + i}" for i in range(2)},
        engine=EngineSettings(),
    )
    server = ProxyServer(Engine(config, now=trio.current_time()), rng=random.Random(1))
    shared = server._shared  # the connection loop's state, as accept_loop passes it

    async def dial(self: UpstreamPool, target: Target) -> trio.abc.Stream:
        return await _dial(nursery)

    UpstreamPool._dial = dial  # type: ignore[method-assign]

    async def serve(stream: trio.abc.Stream) -> None:
        client = Client(stream, False)
        shared.clients.add(client)
        await serve_client(shared, client)

    return serve


def _bare(nursery: trio.Nursery) -> Serve:
    """The bare httptools forwarder's connection handler, dialling memory streams."""
    import _bare_common
    import _bare_httptools_forwarder

    async def dial(self: Any) -> trio.abc.Stream:
        return await _dial(nursery)

    _bare_common.Upstream.dial = dial  # type: ignore[assignment]
    ups = [_bare_common.Upstream("upstream", 1, "backend.local", None) for _ in range(2)]  # type: ignore[arg-type]
    rr = itertools.cycle(range(2))

    async def serve(stream: trio.abc.Stream) -> None:
        await _bare_httptools_forwarder.handle(stream, ups, rr, b"backend.local")  # type: ignore[arg-type]

    return serve


LOADED = "bare httptools, tunnel-lb loaded"
"""The row ``--loaded`` adds: the bare forwarder serving every request, in a process that
has also imported ``tunnel-lb run``'s modules and built the tunnel-lb row's proxy beside it
(configuration, engine, built-in data centers), so that only the memory the process holds,
not the work per request, differs from the bare row."""


_KEPT: list[Serve] = []


def _serve(row: str, nursery: trio.Nursery) -> Serve:
    if row == "tunnel-lb":
        return _tunnel_lb(nursery)
    if row == LOADED:
        import lb.commands.run  # noqa: F401  (what `tunnel-lb run` imports besides the proxy)

        _KEPT.append(_tunnel_lb(nursery))  # alive as long as the process, as in `run`
    return _bare(nursery)


async def _run(row: str, requests: int, clients: int, mode: str) -> dict[str, float]:
    """Per request of the measured round (one warm round first): CPU seconds (``cpu``), or
    the scheduler counts of ``--steps``; ``callgrind`` switches valgrind's counting on around
    the round."""
    async with trio.open_nursery() as nursery:
        serve = _serve(row, nursery)

        async def client(per: int, done: list[int], finished: trio.Event) -> None:
            ours, theirs = _pair()
            nursery.start_soon(serve, theirs)
            for _ in range(per):
                await ours.send_all(REQUEST)
                got = b""
                while not got.endswith(b"x\n"):
                    got += await ours.receive_some(65536)
            await ours.aclose()
            done[0] += 1
            if done[0] == clients:
                finished.set()

        async def round_() -> None:
            finished, done = trio.Event(), [0]
            for _ in range(clients):
                nursery.start_soon(client, requests // clients, done, finished)
            await finished.wait()

        await round_()  # warm: pools, caches, the first decision
        steps = _Steps()
        profile = cProfile.Profile()
        if mode == "callgrind":
            _callgrind("on")
        elif mode == "steps":
            trio.lowlevel.add_instrument(steps)
            profile.enable()
        start = time.process_time()
        await round_()
        used = time.process_time() - start
        if mode == "callgrind":
            _callgrind("off")
        elif mode == "steps":
            profile.disable()
            trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    done = requests // clients * clients
    if mode == "steps":
        return {name: n / done for name, n in steps.counts(profile).items()}
    return {"cpu": used / done}


class _Steps(trio.abc.Instrument):
    """Counts what the scheduler does: task steps, spawns, reschedules."""

    def __init__(self) -> None:
        self.steps = self.spawned = self.scheduled = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1

    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self.scheduled += 1

    def counts(self, profile: cProfile.Profile) -> dict[str, int]:
        """These counts, with the calls of :data:`CALLS` and all calls from ``profile``."""
        out = {
            "task steps": self.steps,
            "tasks spawned": self.spawned,
            "tasks rescheduled": self.scheduled,
        }
        calls = dict.fromkeys(CALLS.values(), 0)
        total = 0
        stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        for (path, _, func), (_, ncalls, _, _, _) in stats.items():
            total += ncalls
            name = CALLS.get((Path(path).name, func))
            if name is not None and f"{os.sep}trio{os.sep}" in path:
                calls[name] += ncalls
        out.update(calls)
        out["Python calls (cProfile)"] = total
        return out


CALLS = {
    ("_run.py", "checkpoint"): "checkpoint()",
    ("_run.py", "checkpoint_if_cancelled"): "checkpoint_if_cancelled()",
    ("_traps.py", "cancel_shielded_checkpoint"): "cancel_shielded_checkpoint()",
    ("_traps.py", "wait_task_rescheduled"): "wait_task_rescheduled()",
    ("_run.py", "__enter__"): "cancel scopes entered",
    ("_run.py", "open_nursery"): "nurseries opened",
    ("_util.py", "__enter__"): "conflict detectors entered",
}
"""trio functions counted by ``--steps``: (file, function) to the row's name.  In trio
0.35 the only ``__enter__`` of _run.py that can run is ``CancelScope``'s (the other refuses
to be entered), and the only one of _util.py is ``ConflictDetector``'s."""


def _callgrind(state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True)


def _child(row: str, requests: int, clients: int, mode: str) -> None:
    gc.freeze()  # as `tunnel-lb run` does (lb/commands/run.py)
    gc.set_threshold(10_000)
    print(json.dumps(trio.run(_run, row, requests, clients, mode)))


def _measure(row: str, requests: int, clients: int, mode: str) -> dict[str, float]:
    """One child process's measure of ``row`` (see :func:`_run`)."""
    argv = [sys.executable, __file__, "--child", row, "--mode", mode]
    argv += ["--requests", str(requests), "--clients", str(clients)]
    argv += ["--sockets"] if SOCKETS else []
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    got: dict[str, float] = json.loads(out)
    return got


def _instructions(row: str, requests: int, clients: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                row,
                "--requests",
                str(requests),
                "--clients",
                str(clients),
                "--mode",
                "callgrind",
                *(["--sockets"] if SOCKETS else []),
            ],
            capture_output=True,
            check=True,
            # String hashes seeded alike in every run, one source of spread less (dict and
            # set layouts); object addresses still vary, and so does the count, by up to
            # ~1,700 instructions per request between runs of one commit.
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        for line in out.read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1]) / requests
    raise RuntimeError("no totals line in the callgrind output")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=10, help="concurrent client connections")
    parser.add_argument("--rounds", type=int, default=5, help="CPU: best of this many")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    parser.add_argument("--steps", action="store_true", help="count scheduler steps instead")
    parser.add_argument("--sockets", action="store_true", help="over socket pairs (see SOCKETS)")
    parser.add_argument("--loaded", action="store_true", help="CPU: add the row LOADED")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.requests, args.clients, args.mode)
        return 0
    rows: tuple[str, ...] = ("bare httptools", "tunnel-lb")
    if args.steps:
        requests = min(args.requests, 2000)  # cProfile slows each call down
        got = {row: _measure(row, requests, args.clients, "steps") for row in rows}
        print(f"{'per request':30} {rows[0]:>15} {rows[1]:>15}")
        for name in got[rows[0]]:
            print(f"{name:30} {got[rows[0]][name]:15.2f} {got[rows[1]][name]:15.2f}")
        return 0
    if args.callgrind:
        from proxy import ensure  # bench/proxy.py's apt-get helper

        if not ensure("valgrind", "valgrind"):
            print("valgrind is required for --callgrind; giving up")
            return 1
        requests = min(args.requests, 1000)  # about 15 s per row under valgrind
        counts = {row: _instructions(row, requests, args.clients) for row in rows}
        for row in rows:
            print(f"{row:15} {counts[row]:10,.0f} instructions per request")
        print(f"ratio {counts['tunnel-lb'] / counts['bare httptools']:.2f}")
        return 0
    rows += (LOADED,) if args.loaded else ()
    best = {row: float("inf") for row in rows}
    for _ in range(args.rounds):
        for row in rows:  # interleaved, so that drift hits both rows alike
            cpu = _measure(row, args.requests, args.clients, "cpu")["cpu"]
            best[row] = min(best[row], cpu)
    for row in rows:
        print(f"{row:15} {best[row] * 1e6:7.1f} µs CPU per request (best of {args.rounds})")
    if args.loaded:
        print(f"{LOADED} / bare httptools: {best[LOADED] / best['bare httptools']:.2f}")
    print(f"ratio {best['tunnel-lb'] / best['bare httptools']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
