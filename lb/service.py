"""The LB process: engine, monitors, proxy and admin in one trio nursery.

This is the composition root of ``tunnel-lb run``: the only place that knows every part.
Each part is the same code the tests and the simulator run; here they get the real clock,
the real network and the real signals:

* ``SIGHUP`` (and ``POST /reload``) re-read the configuration files and every file they
  name (:func:`lb.files.read_files`, as ``check`` and ``run`` do).  An invalid
  configuration, or a missing or broken certificate, key, CA bundle or token file, is
  logged and counted and the old one keeps serving (old certificates included), and so is
  one without any load balancer unless forced (``POST /reload?force=1``,
  :mod:`lb.config.serving`); a valid one keeps the health of unchanged endpoints and the
  affinity secret, and in-flight requests finish.  Any other error while loading or
  applying (a bug in the loader, an exception from ``reconfigure``) is a failed reload too,
  never a crash.  Certificates are read again even when their paths did not change (a
  renewed certificate is served after ``systemctl reload``) and so is ``engine.upstream_ca``:
  new connections use them, open ones keep theirs.  The admin token (``admin_token_file``
  or ``admin_token_env``) is read again too and rotated: the old token is refused from the
  reload's reply on (a reload that would leave an admin listener beyond loopback without a
  token is refused).  ``admin_token_env`` reads the environment the process started with,
  so a new value there takes a restart.  Listener addresses are not rebound on reload, and
  ``engine.workers`` and the other :data:`_RESTART_ONLY` fields are fixed at start: a reload
  that changes them says so (``restart_required`` in its reply, and the
  ``config_restart_required`` log event).
  A SIGHUP reload runs in the background: a SIGTERM during it drains at once.
* ``SIGTERM`` / ``SIGINT`` stop accepting and drain in-flight requests for up to
  ``engine.drain_timeout`` seconds.  The signal receiver exists before anything listens
  (:mod:`lb.lifecycle`): a signal during start-up stops the process cleanly too.
* :class:`Overrides` (``tunnel-lb run --listen/--admin``, the demo's chosen ports) replace
  parts of every configuration read, at start and on reload.  A listener that cannot be
  bound is a :class:`~lb.lifecycle.ListenError` naming its address; the addresses actually
  bound (port 0 picks a free one) are logged (``proxy_listening``, ``admin_listening``) and
  shown on ``/status``.
* ``engine.workers: N`` (N > 1) adds N-1 proxy worker processes on the same listen
  addresses (SO_REUSEPORT) that share this process's health view: :mod:`lb.workers` and
  ``docs/workers.md``.  This process stays the only prober, the admin and the reloader;
  :func:`serve_worker` is the composition root of one worker.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import trio

from lb import logs
from lb.admin import ReloadResult, serve_admin
from lb.admin_guard import Guard, guard_with
from lb.cluster.service import make_scheduler, serve_cluster
from lb.config.errors import ConfigError, Problem
from lb.config.hosts import LOOPBACK, split_host_port
from lb.config.loader import LoadResult, load_config
from lb.config.model import Config, Listener
from lb.config.serving import RELOAD_FORCE_HINT, serving_problem
from lb.core.health import HealthEvent
from lb.engine import Engine
from lb.files import Files, read_files, upstream_context
from lb.lifecycle import STOP_SIGNALS, ListenError, host_port, receive_signals
from lb.metrics import Metrics
from lb.proxy.hooks import ProxyHooks, RequestRecord
from lb.proxy.listeners import (
    AnyListener,
    TlsListener,
    configured_addresses,
    is_https,
    is_https_spec,
    listener_contexts,
    open_listeners,
)
from lb.proxy.server import ProxyServer, serve_proxy
from lb.statefile import keep_state, load_state
from lb.workers import ChildContext, Workers, run_child
from monitors.network import NetworkTransport
from monitors.scheduler import Scheduler, probe_rng
from monitors.spec import jobs_for_config

__all__ = ["Overrides", "Running", "serve_lb", "serve_worker"]


@dataclass(frozen=True, slots=True)
class Overrides:
    """Settings given on the command line (or chosen by the demo) that win over the files,
    at start and on every reload."""

    listen: tuple[Listener, ...] = ()
    """Replaces ``engine.listen`` when not empty.  The i-th entry keeps the certificates of
    the file's i-th listener, if any (``--listen`` moves a listener, it does not strip TLS)."""
    admin: str | None = None
    """Replaces ``engine.admin``."""
    connect_to: Mapping[str, str] = field(default_factory=dict)
    """Entries added to (or replacing those of) the file's ``connect_to``."""

    def apply(self, config: Config) -> Config:
        """``config`` with these overrides in place."""
        engine = config.engine
        if self.listen:
            old = engine.listen
            listen = tuple(
                replace(old[i], address=new.address, port=new.port) if i < len(old) else new
                for i, new in enumerate(self.listen)
            )
            engine = replace(engine, listen=listen)
        if self.admin is not None:
            engine = replace(engine, admin=self.admin)
        changed = replace(config, engine=engine) if engine is not config.engine else config
        if self.connect_to:
            changed = replace(changed, connect_to={**changed.connect_to, **self.connect_to})
        return changed


@dataclass(slots=True)
class Running:
    """What a started LB reports: where it listens, and handles for tests and the demo."""

    proxy: list[tuple[str, int]]
    admin: tuple[str, int]
    engine: Engine
    metrics: Metrics
    shutdown: trio.Event
    reload: ReloadFn
    workers: Workers | None = None
    """The child proxy workers when ``engine.workers > 1``."""


@dataclass(slots=True)
class Swappable:
    """What a reload replaces in place: the TLS contexts of new connections and the admin
    token."""

    guard: Guard | None = None
    """The admin listener's guard in force, asked at every admin request; a reload gives it
    the token it read (None in a child worker, which has no admin listener)."""
    admin_host: str = LOOPBACK
    """The host the admin listener was bound to at start (a reloaded ``engine.admin`` is
    not rebound): whether a reload may leave it without a token."""
    started: Config | None = None
    """The configuration the process started with: what a restart-only field is compared
    with, reload after reload (None in a child worker, which never reloads itself)."""
    listeners: list[AnyListener] = field(default_factory=list)
    """The proxy's listeners once bound; a reload gives each HTTPS one its new context."""
    opened_as: list[tuple[str, int]] = field(default_factory=list)
    """The configured (address, port) of each listener: the i-th entry of a new
    ``engine.listen`` is that listener only while it names the same address."""
    upstream: list[NetworkTransport | ProxyServer] = field(default_factory=list)
    """Who connects to endpoints (probes, traffic); empty when the caller fixed the context
    (``serve_lb(upstream_ssl=...)``)."""

    def refusal(self, config: Config, files: Files) -> str | None:
        """Why ``config`` cannot be applied to the admin listener, or None: the token it
        leaves (``files.token``) must be set while the listener is bound beyond loopback, as
        at start."""
        if self.guard is None:
            return None
        try:
            guard_with(config, self.admin_host, files.token)
        except ConfigError as exc:
            return "; ".join(str(p) for p in exc.problems)
        return None

    def admin_guard(self) -> Guard:
        """The admin listener's guard in force (what ``serve_admin`` asks per request)."""
        assert self.guard is not None, "only the parent has an admin listener"
        return self.guard

    def apply(self, config: Config, files: Files) -> list[str]:
        """Swap in the contexts and the admin token of ``files``; return what needs a
        restart instead (compared with what runs, however many reloads came in between)."""
        self.swap(config, files)
        if self.guard is not None and self.guard.token != files.token:
            # Only the token: the names the guard accepts (``admin_names``) need a restart.
            self.guard = replace(self.guard, token=files.token)
            logs.event("admin_token_rotated", required=files.token is not None)
        old = self.started
        assert old is not None, "only the parent reloads"
        restart: list[str] = []
        listening = configured_addresses(old.engine.listen)
        https = [is_https(listener) for listener in self.listeners]
        if configured_addresses(config.engine.listen) != listening or (
            self.listeners and [c is not None for c in files.listeners] != https
        ):
            restart.append("engine.listen")
        if old.engine.admin != config.engine.admin:
            restart.append("engine.admin")
        restart += [
            f"engine.{name}"
            for name in _RESTART_ONLY
            if getattr(old.engine, name) != getattr(config.engine, name)
        ]
        return restart

    def swap(self, config: Config, files: Files) -> None:
        """New connections from now on use the TLS contexts of ``files`` (read for ``config``):
        each HTTPS listener its own (a listener that moved, or became plain HTTP, or the
        reverse, waits for a restart), and probes and traffic the ``engine.upstream_ca``
        one."""
        for listener, spec, opened_as, context in zip(
            self.listeners, config.engine.listen, self.opened_as, files.listeners, strict=False
        ):
            moved = (spec.address, spec.port) != opened_as  # a restart applies it
            if isinstance(listener, TlsListener) and context is not None and not moved:
                listener.context = context
        for user in self.upstream:
            if isinstance(user, NetworkTransport):
                user.verified = files.upstream
            else:
                user.pool.ssl_context = files.upstream


class ReloadFn:
    """Re-read the configuration files; serialised so two reloads never interleave."""

    def __init__(
        self,
        paths: Sequence[str],
        engine: Engine,
        scheduler: Scheduler,
        metrics: Metrics,
        swappable: Swappable,
        overrides: Overrides | None = None,
    ):
        self._paths = list(paths)
        self._overrides = overrides or Overrides()
        self._engine = engine
        self._scheduler = scheduler
        self._metrics = metrics
        self._lock = trio.Lock()
        self.swappable = swappable

    async def __call__(self, *, force: bool = False) -> ReloadResult:
        """Reload; without ``force``, a configuration without load balancers is refused."""
        async with self._lock:
            try:
                config, files = await trio.to_thread.run_sync(_load, self._paths, self._overrides)
            except ConfigError as exc:
                errors = tuple(str(p) for p in exc.problems)
                return self._failed(errors)
            except Exception as exc:  # a bug in the loader: still a failed reload
                return self._failed((f"{type(exc).__name__}: {exc}",), exc)
            empty = None if force else serving_problem(config, RELOAD_FORCE_HINT)
            if empty is not None:
                return self._failed((str(empty),))
            tokenless = self.swappable.refusal(config, files)
            if tokenless is not None:
                return self._failed((tokenless,))
            old = self._engine.config
            try:
                self._engine.reconfigure(config, now=trio.current_time())
                self._scheduler.update(jobs_for_config(config, self._engine.targets()))
            except Exception as exc:
                if self._engine.config is not old:
                    # Swapped in before the failure (an observer or the monitors): traffic
                    # uses the new configuration, so say so rather than claim the old one,
                    # and serve it with its own files.
                    self.swappable.apply(config, files)
                    logs.event(
                        "config_reload_partial",
                        logging.ERROR,
                        generation=self._engine.generation,
                        detail="the new configuration is in use; fix and reload again",
                    )
                return self._failed((f"{type(exc).__name__}: {exc}",), exc)
            self._metrics.reload(True)
            restart = self.swappable.apply(config, files)
            if "engine.listen" in restart or "engine.admin" in restart:
                logs.event(
                    "config_listeners_unchanged",
                    logging.WARNING,
                    detail="listen/admin changes take effect after a restart",
                )
            fixed = [name for name in restart if name not in ("engine.listen", "engine.admin")]
            if fixed:
                logs.event(
                    "config_restart_required",
                    logging.WARNING,
                    needs_restart=fixed,
                    detail="these changes take effect after a restart",
                )
            logs.event("config_reloaded", generation=self._engine.generation, files=self._paths)
            detail = {"restart_required": restart} if restart else {}
            return ReloadResult(ok=True, generation=self._engine.generation, detail=detail)

    def _failed(self, errors: tuple[str, ...], exc: BaseException | None = None) -> ReloadResult:
        """Count and log a failed reload (the old configuration keeps serving, unless
        ``config_reload_partial`` was logged)."""
        self._metrics.reload(False)
        logs.event(
            "config_reload_failed",
            logging.ERROR,
            errors=list(errors),
            **({} if exc is None else {"error_type": type(exc).__name__}),
        )
        return ReloadResult(ok=False, errors=errors, generation=self._engine.generation)


_RESTART_ONLY = (
    "workers",
    "cluster",
    "admin_names",
    "state_file",
)
"""``engine`` fields a reload cannot apply: the worker processes, the cluster connection, the
names the admin listener's guard accepts and the state file's writer are made once at start
(its token is not: ``admin_token_file`` and ``admin_token_env`` are read again and applied,
:meth:`Swappable.apply`)."""


def _load(paths: Sequence[str], overrides: Overrides) -> tuple[Config, Files]:
    """The configuration of ``paths`` with ``overrides``, and its files read."""
    result = load_config(paths)
    config = overrides.apply(result.config)
    return config, read_files(result, config)


def _log_transition(event: HealthEvent) -> None:
    logs.event(
        "health_transition",
        pool=event.pool,
        endpoint=event.endpoint,
        vantage=event.vantage,
        before=event.before.value,
        after=event.after.value,
        reason=event.reason,
        status=event.status,
        at=round(event.at, 3),
    )


def _hooks(engine: Engine, metrics: Metrics, worker: int | None = None) -> ProxyHooks:
    """Metrics and access log per request; ``worker`` (0 = the parent) is logged with
    ``engine.workers > 1`` so that an operator can tell the processes apart."""
    access_log = logging.getLogger("tunnel_lb.access")
    extra = {} if worker is None else {"worker": worker}

    def done(record: RequestRecord) -> None:
        endpoint = record.endpoint.partition("/")[2] if record.endpoint else None
        lb = record.load_balancer or ""
        metrics.request_done(lb, record.pool, endpoint, record.status, record.duration)
        metrics.exchange_done(record)
        if record.websocket and record.status == 101:  # paired with upgraded() below
            metrics.websocket_closed(lb, record.bytes_in, record.bytes_out)
        for attempt in record.attempts:
            if attempt.error:
                name = attempt.endpoint.partition("/")[2]
                metrics.upstream_error(attempt.pool, name, attempt.error)
        if record.budget_refused:
            metrics.retry_budget_refused(lb)
        if record.retried:
            # One count per retry, each of its kind, in the pool of the attempt that failed.
            for attempt in record.attempts:
                kind = attempt.retried
                if kind == "retry_on":  # by the condition that matched (docs/semantics.md)
                    metrics.retry(lb, f"retry_on_{attempt.retry_on}", attempt.pool)
                elif kind == "zero_downtime_failover":  # the 521, 522... that set it off
                    metrics.retry(lb, str(attempt.status), attempt.pool)
                elif kind:  # stale_connection: a dead pooled connection
                    metrics.retry(lb, kind, attempt.pool)
        if engine.config.engine.access_log:
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": record.method,
                        "host": record.host,
                        "target": record.target,
                        "client_ip": record.client_ip,
                        "status": record.status,
                        "endpoint": record.endpoint,
                        "decision": record.decision,
                        "retried": record.retried,
                        "retry_on": [a.retry_on for a in record.attempts if a.retry_on] or None,
                        "attempts": [a.endpoint for a in record.attempts],
                        "duration": round(record.duration, 6),
                        "request_id": record.request_id,
                        **extra,
                    }
                },
            )

    def upgraded(record: RequestRecord) -> None:
        endpoint = record.endpoint.partition("/")[2] if record.endpoint else None
        metrics.websocket_opened(record.load_balancer or "", record.pool, endpoint)

    return ProxyHooks(
        on_request_done=done,
        on_decision=metrics.decision,
        on_upgrade=upgraded,
        on_connection=metrics.connection,
        on_request_start=metrics.request_started,
        on_tls_failed=metrics.tls_failed,
        on_slow_body=metrics.slow_body,
        on_slow_read=metrics.slow_read,
    )


async def serve_lb(
    paths: Sequence[str],
    *,
    config: Config | None = None,
    files: Files | None = None,
    upstream_ssl: ssl.SSLContext | None = None,
    seed: int | None = None,
    handle_signals: bool = True,
    overrides: Overrides | None = None,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the load balancer until shut down.

    Args:
        paths: configuration files (re-read on reload).
        config: the already-loaded configuration of ``paths``, overrides applied (loaded
            here when None).
        files: what :func:`lb.files.read_files` read for ``config`` (read here when None).
        upstream_ssl: TLS context for probes and traffic, kept on reload; from
            ``engine.upstream_ca`` (and re-read on every reload) if None.
        seed: seed of probe spreading and steering picks (random when None).
        handle_signals: install SIGHUP / SIGTERM / SIGINT handling (off in tests), before
            anything listens.
        overrides: applied to every configuration read (here when ``config`` is None, and
            on every reload).
        shutdown: set it to drain and stop (one is made when None); a caller that handles
            the signals itself (the demo) passes its own.
        task_status: ``started(Running)`` once the proxy and admin listen.

    Raises:
        ConfigError: a file the configuration names is missing or unusable (when ``files``
            is None), or the admin API would listen beyond loopback without a token.
        ListenError: (inside trio's exception groups) when a listener cannot be bound.
    """
    overrides = overrides or Overrides()
    if config is None:
        result = load_config(paths)
        config = overrides.apply(result.config)
    else:
        result = LoadResult(config=config, warnings=[])
    if files is None:
        files = read_files(result, config)
    tls = upstream_ssl or files.upstream
    # Before anything listens: an admin beyond loopback without a token is a one-line
    # configuration error.
    admin_host = split_host_port(config.engine.admin, default_host=LOOPBACK)[0]
    admin_guard = guard_with(config, admin_host, files.token)
    swappable = Swappable(guard=admin_guard, admin_host=admin_host, started=config)
    rng = random.Random(seed)
    engine = Engine(config, now=trio.current_time())
    metrics = Metrics()
    metrics.attach(engine)
    engine.observers.health.append(_log_transition)
    state_file = config.engine.state_file
    if state_file:  # before the first probe and the first request
        load_state(engine, state_file, now=trio.current_time())
    transport = NetworkTransport(ssl_context=tls, reuse=config.engine.probe_connection_reuse)
    proxy_server = ProxyServer(
        engine,
        hooks=_hooks(engine, metrics, None if config.engine.workers == 1 else 0),
        rng=random.Random(rng.random()),
        upstream_ssl=tls,
    )
    if upstream_ssl is None:  # else the caller's context stays
        swappable.upstream += [transport, proxy_server]
    scheduler = make_scheduler(  # sharded among the replicas of a cluster (lb.cluster)
        config,
        transport,
        engine.apply,
        rng=probe_rng(seed),  # the simulator's schedule for the same seed
        first_round_rate=500,  # ramp TLS handshakes when thousands of endpoints start
    )
    scheduler.update(jobs_for_config(config, engine.targets()))
    reload = ReloadFn(paths, engine, scheduler, metrics, swappable, overrides)
    if shutdown is None:
        shutdown = trio.Event()
    workers = None
    if config.engine.workers > 1:
        command = [sys.executable, "-m", "lb", "run", "--worker", *logs.child_arguments()]
        workers = Workers(
            engine,
            metrics,
            count=config.engine.workers - 1,
            command=[*command, *paths],
            seeds=lambda: rng.getrandbits(63),
        )
    logs.event("starting", files=list(paths))
    async with trio.open_nursery() as nursery:
        if handle_signals:
            # Before anything listens: a signal from here on drains, whenever it comes.
            await nursery.start(_signals, reload, shutdown)
        await nursery.start(serve_cluster, engine, scheduler, metrics)  # warm start first
        await nursery.start(scheduler.run)
        # The probe schedule's time 0 (first-round phases count from here): rehearse aligns
        # the traffic and timeline with it through this line's ``mono``.
        logs.event("monitors_started", jobs=len(scheduler.jobs))
        if state_file:
            await nursery.start(keep_state, engine, state_file)
        admin = await _start_admin(
            nursery, engine, metrics, reload, swappable.admin_guard, shutdown
        )
        listeners = await _open_proxy_listeners(
            config.engine.listen, files.listeners, workers is not None
        )
        swappable.listeners = listeners
        swappable.opened_as = configured_addresses(config.engine.listen)
        workers_started = False

        async def workers_stopped() -> None:
            if workers is not None and workers_started:
                await workers.stopped()

        proxy = await nursery.start(
            _proxy_then_stop,
            nursery.cancel_scope,
            functools.partial(
                serve_proxy, engine, listeners, server=proxy_server, shutdown=shutdown
            ),
            workers_stopped,
        )
        for listener, address in zip(listeners, proxy, strict=True):
            logs.event("proxy_listening", addr=host_port(*address), tls=is_https(listener))
        engine.listening = {
            "proxy": [host_port(*address) for address in proxy],
            "admin": [host_port(*admin)],
        }
        if workers is not None and not shutdown.is_set():
            await nursery.start(workers.run, proxy, shutdown)
            workers_started = True
        if not shutdown.is_set():
            logs.event(
                "ready",
                proxy=engine.listening["proxy"],
                admin=engine.listening["admin"][0],
                workers=config.engine.workers,
            )
        task_status.started(Running(proxy, admin, engine, metrics, shutdown, reload, workers))


async def _start_admin(
    nursery: trio.Nursery,
    engine: Engine,
    metrics: Metrics,
    reload: ReloadFn,
    guard: Callable[[], Guard],
    draining: trio.Event,
) -> tuple[str, int]:
    """Start the admin listener; a bind failure is a :class:`ListenError` naming the address
    (``nursery.start`` raises only what happened before the listener was up)."""
    try:
        bound: tuple[str, int] = await nursery.start(
            functools.partial(
                serve_admin, engine, metrics, reload=reload, guard=guard, draining=draining
            )
        )
    except OSError as exc:
        address = engine.config.engine.admin
        with contextlib.suppress(ValueError):  # the loader validated it
            address = host_port(*split_host_port(address, default_host=LOOPBACK))
        raise ListenError(address, exc) from exc
    return bound


async def _open_proxy_listeners(
    specs: Sequence[Listener], contexts: Sequence[ssl.SSLContext | None], reuse_port: bool
) -> list[AnyListener]:
    """Bind every proxy listener with its TLS context, one at a time so that a failure names
    its address."""
    out: list[AnyListener] = []
    try:
        for spec, context in zip(specs, contexts, strict=True):
            try:
                out += await open_listeners([spec], contexts=[context], reuse_port=reuse_port)
            except OSError as exc:
                raise ListenError(host_port(spec.address, spec.port), exc) from exc
    except BaseException:
        for listener in out:
            await listener.aclose()
        raise
    return out


async def _proxy_then_stop(
    scope: trio.CancelScope,
    serve: Callable[..., Awaitable[None]],
    then: Callable[[], Awaitable[None]] | None = None,
    *,
    task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the proxy; once it has drained (and ``then``: the workers have exited), stop
    everything else too."""
    await serve(task_status=task_status)
    if then is not None:
        await then()
    logs.event("stopped")
    scope.cancel()


async def _signals(
    reload: Callable[[], Awaitable[object]],
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGHUP reloads; SIGTERM and SIGINT start a graceful shutdown.  ``started`` once the
    receiver exists (a signal recorded before that has been handled already)."""

    async with trio.open_nursery() as nursery:

        def on_signal(signum: int) -> None:
            if signum in STOP_SIGNALS:
                if not shutdown.is_set():
                    logs.event("draining", signal=signal.Signals(signum).name)
                shutdown.set()
            elif not shutdown.is_set():
                # In the background: a SIGTERM during a slow reload drains at once.
                nursery.start_soon(_reload_logged, reload)

        await nursery.start(receive_signals, on_signal)
        task_status.started()


async def _reload_logged(reload: Callable[[], Awaitable[object]]) -> None:
    """A SIGHUP reload: whatever it raises is logged, never fails the service."""
    try:
        await reload()
    except Exception as exc:
        logs.event("config_reload_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}")


class _Rereader:
    """In a child worker, on each configuration the parent swaps in (and the one it starts
    with): read its files again, as the parent did just before, so a renewed certificate is
    served by every process.  Read in a thread, never on the event loop; a newer
    configuration arriving meanwhile wins.  A file that broke in between keeps the previous
    contexts, logged."""

    def __init__(self, swappable: Swappable) -> None:
        self.swappable = swappable
        self.latest: Config | None = None
        self.wake = trio.Event()

    def __call__(self, config: Config) -> None:
        """The engine's configuration observer."""
        self.latest = config
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            config = self.latest
            assert config is not None
            read = functools.partial(
                read_files, LoadResult(config=config, warnings=[]), token=False
            )
            try:
                files = await trio.to_thread.run_sync(read)
            except ConfigError as exc:
                problems = await trio.to_thread.run_sync(worker_file_problems, config, exc)
                errors = [str(p) for p in problems]
                logs.event("worker_files_unchanged", logging.ERROR, errors=errors)
                continue
            except Exception as exc:  # a bug or a library's own error: keep serving
                error = f"{type(exc).__name__}: {exc}"
                logs.event("worker_files_unchanged", logging.ERROR, errors=[error])
                continue
            if self.latest is config:  # else the newer one is read next
                self.swappable.swap(config, files)


def worker_file_problems(config: Config, exc: ConfigError) -> list[Problem]:
    """The problems a child worker found in the files ``config`` names, at the lines they
    are named on, as the parent reports them.

    The child receives the configuration object, not the loader's record of where each file
    name was written (:attr:`LoadResult.files`): rather than carry that over the pipe with
    every swap, it is re-derived here by loading the configuration's own files again, only
    when there is a problem to report.  The lines are those of the files as they are now
    (one edited since the parent read it may have moved them); files that no longer load
    leave the problems as they are, without lines.  Blocking: run it in a thread.
    """
    try:
        where = load_config(config.source).files if config.source else {}
    except (ConfigError, OSError):
        where = {}
    if not where:
        return list(exc.problems)
    located = LoadResult(config=config, warnings=[], files=where)
    return [
        located.problem(p.path, p.message) if p.path and p.line is None else p for p in exc.problems
    ]


def _child_listeners(
    bound: Sequence[Listener], opened_as: Sequence[tuple[str, int]], now: Sequence[Listener]
) -> list[Listener]:
    """What a child opens: each socket the parent bound at its start, with the certificate
    files its ``engine.listen`` entry names *now*, as the parent serves them since the last
    reload (a child restarted after a reload that renamed them must not need the start's
    files, which may be gone).  Not when that entry moved or turned HTTPS or plain HTTP: the
    parent keeps the start's certificate (or none) there until a restart, and the child
    reads the start's files (:meth:`Swappable.swap`)."""
    out: list[Listener] = []
    for i, (spec, configured) in enumerate(zip(bound, opened_as, strict=True)):
        new = now[i] if i < len(now) else None
        if (
            new is not None
            and (new.address, new.port) == configured
            and is_https_spec(new)
            and is_https_spec(spec)
        ):
            spec = replace(
                spec, certificate=new.certificate, key=new.key, certificates=new.certificates
            )
        out.append(spec)
    return out


def _child_contexts(ctx: ChildContext, config: Config) -> list[ssl.SSLContext | None]:
    """The TLS contexts a starting child opens its listeners with (:func:`_child_listeners`).
    If the files ``config`` names broke after the reload that named them, the start's files
    (as the parent was bound with them), logged ``worker_start_files``: else every restart
    of this child would fail the same way.

    Raises:
        ConfigError: the start's files are broken too.
    """
    specs = _child_listeners(ctx.listen, ctx.opened_as, config.engine.listen)
    try:
        return listener_contexts(specs)
    except ConfigError as exc:
        if specs == ctx.listen:
            raise
        errors = [str(p) for p in exc.problems]
        logs.event("worker_start_files", logging.WARNING, worker=ctx.worker, errors=errors)
        return listener_contexts(ctx.listen)


def serve_worker() -> None:
    """Run one child proxy worker (``tunnel-lb run --worker FILE...``) until told to stop.

    Its configuration, affinity secret, listen addresses and health all come from the
    parent over stdin (:func:`lb.workers.run_child`); the files on its command line only
    say, in ``ps``, which configuration it serves.  The certificate and CA files the
    configuration names are read here too, at start and on every configuration swap.  It
    has no scheduler, no admin listener and no reload of its own: one process probes, every
    process serves.
    """
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the parent
    metrics = Metrics()  # traffic counters only, reported to the parent

    async def serve(
        ctx: ChildContext,
        shutdown: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        engine = ctx.engine
        config = engine.config  # the contexts below are read for this one
        listeners = await open_listeners(
            ctx.listen, contexts=_child_contexts(ctx, config), reuse_port=True
        )
        server = ProxyServer(
            engine,
            hooks=_hooks(engine, metrics, ctx.worker),
            rng=random.Random(ctx.seed),
            upstream_ssl=upstream_context(engine.config),
        )
        # Compared with what the parent bound at its start, not with ``engine.config``: a
        # child started after a reload that moved a listener still binds the old address,
        # and serves its certificate as the parent does.
        swappable = Swappable(listeners=listeners, opened_as=ctx.opened_as, upstream=[server])
        reread = _Rereader(swappable)
        engine.observers.config.append(reread)
        if engine.config is not config:  # a newer one arrived while the sockets opened
            reread(engine.config)
        async with trio.open_nursery() as rereading:
            rereading.start_soon(reread.run)
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(
                        serve_proxy, engine, listeners, server=server, shutdown=shutdown
                    )
                )
                task_status.started()
            rereading.cancel_scope.cancel()  # served and drained: nothing more to read

    trio.run(run_child, serve, metrics)
