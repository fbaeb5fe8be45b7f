"""One request: refuse what must be refused, steer, make the attempts, relay the response.

Why this shape: the exchange is the proxy's decision-making, and everything else (the
connection loop, the body, the splice, the proxy's own answers) is a helper it calls with one
:class:`~lb.proxy.state.Exchange`.  Which failure is retried, and where, is not decided here:
:func:`_attempts` asks the attempt policy the simulator follows too
(:func:`lb.core.attempts.next_step`; docs/proxy.md, "Failures") and only carries it out.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any

import trio

from lb import logs
from lb.config.hosts import normalise_host
from lb.config.model import EngineSettings, RetryOn
from lb.core.attempts import (
    Action,
    Body,
    Failure,
    Retry,
    Step,
    buffer_bound,
    next_step,
    retry_on_for,
)
from lb.core.budget import RetryBudget
from lb.core.snapshot import EndpointView
from lb.proxy import errors, http1
from lb.proxy.body import (
    EOM,
    Replay,
    buffer_body,
    first_chunk_problem,
    pump_body,
    read_whole,
    send_up,
    stop_pump,
    take_body,
    up_send,
)
from lb.proxy.errors import (
    RequestError,
    UpstreamError,
    error_body,
    failure_of,
    public_status,
    reason_phrase,
)
from lb.proxy.headers import (
    affinity_cookie,
    client_address,
    colo_from_ray,
    cookie_value,
    idempotent,
    parse_cookies,
    replayable,
    response_headers,
    safe_header_name,
    safe_header_value,
    scan_request,
    upstream_headers,
)
from lb.proxy.hooks import Attempt, RequestRecord
from lb.proxy.replies import bad_gateway, client_abort, fixed_response, flush_down, reply
from lb.proxy.splice import splice
from lb.proxy.state import (
    RECEIVE_SIZE,
    BodyPump,
    Client,
    ClientError,
    Exchange,
    Move,
    Shared,
)
from lb.proxy.upstream import Target, UpstreamConnection, target_for
from lb.proxy.urls import BadTargetError, origin_form
from steering.affinity import COOKIE_NAME, expires_of
from steering.geo import client_country
from steering.types import Decision, Request

__all__ = ["exchange"]

_VERSIONS = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
_NOT_PROXIED = frozenset({b"CONNECT", b"TRACE"})
"""Methods a reverse proxy does not forward: 501 and close (docs/proxy.md, "Refused")."""


async def exchange(
    shared: Shared, client: Client, conn: http1.Connection, event: http1.Request
) -> bool:
    """Serve one request on ``client`` (``conn`` is its HTTP/1.1 state); True when the connection
    may carry another one.

    The request's state goes to ``client.exchange``; the caller settles and reports it.
    """
    t0 = trio.current_time()
    peer = client.peer
    config = shared.engine.config
    settings = config.engine
    ip_name, dc_name = _header_names(shared, settings)
    facts = scan_request(event.headers, ip_name, dc_name)
    trusted = _is_trusted(shared, peer, settings)
    if trusted:
        client_ip = client_address(facts.client_ip, peer)
        datacenter = colo_from_ray(facts.ray) or settings.datacenter
    else:
        client_ip, datacenter = peer, settings.datacenter
    rid = facts.request_id or f"{shared.rid_prefix}{next(shared.rid_counter):x}".encode()
    try:
        target, authority = origin_form(event.target)
    except BadTargetError:
        target, authority = b"", None
    if authority is not None:
        # RFC 9112 §3.2.2: the URL's authority replaces the Host header, for steering,
        # the endpoint's Host (unless it sets one) and X-Forwarded-Host alike.
        facts.host = authority
    record = RequestRecord(
        method=event.method.decode("latin-1"),
        host=facts.host.decode("latin-1"),
        target=(target or event.target).decode("latin-1"),
        client_ip=client_ip,
        datacenter=datacenter,
        request_id=rid.decode("latin-1"),
    )
    ex = Exchange(
        shared=shared,
        client=client,
        config=config,
        stream=client.stream,
        conn=conn,
        event=event,
        facts=facts,
        record=record,
        watchdog=client.watchdog,
        started=t0,
        tasks=client.tasks,
        peer=peer,
        https=client.https,
        trusted=trusted,
        client_ip=client_ip,
        request_id=rid,
        target=target,
    )
    client.exchange = ex
    shared.hooks.request_start(record)  # settle() reports its end
    if not facts.has_body:
        # The end of a bodiless request is a separate event: take it now, so
        # that every later step sees the request as complete.
        ex.req_done = type(conn.next_event()) is http1.EndOfMessage
    try:
        keep = await _steer(ex)
    except ClientError as abort:
        keep = await client_abort(ex, abort)
    finally:
        if ex.pump is not None:
            await stop_pump(ex)
    return keep


def _steer(ex: Exchange) -> Coroutine[Any, Any, bool]:
    """Refuse or steer the request; returns the coroutine that answers it (the attempts, or
    a refusal, a fixed response...), for :func:`exchange` to await.

    Why not a coroutine awaiting it: every coroutine level between the connection loop and
    a stream is passed through twice at each of the request's scheduler steps (a few
    thousand instructions per request: docs/bench.md, "Fifth look").
    """
    refusal = _refusal(ex)
    if refusal is not None:
        status, body, close = refusal
        return reply(ex, status, body, close=close)
    settings = ex.config.engine
    record = ex.record
    host = record.host
    name = normalise_host(host) if host else ""
    if name is None:
        # Before steering: such a Host could still match a load balancer (the lookup is
        # lenient), then fail as the upstream TLS server name (``a.example..``).
        record.error = RequestError.BAD_HOST
        return reply(ex, 400, b"400 Bad Request: invalid Host header\n", close=True)
    # Header affinity needs every request header and cookie; the router reads them only
    # for a load balancer with ``session_affinity: header``, so they are built on demand.
    event, facts = ex.event, ex.facts
    req = Request(
        host=name,
        client_ip=ex.client_ip,
        datacenter=record.datacenter,
        country=_client_country(event.headers, settings) if ex.trusted else "",
        cookie=cookie_value(facts.cookie, COOKIE_NAME) if facts.cookie else None,
        headers=_LazyHeaders(event.headers),
        cookies=_LazyCookies(facts.cookie),
        now=ex.started,
        wall=time.time(),
        method=record.method,
        uri=record.target,  # origin-form; the router normalizes it for rules
        version=_VERSIONS.get(event.http_version, "HTTP/1.1"),
    )
    shared = ex.shared
    decision = shared.engine.decide(req, shared.rng)
    shared.hooks.decision(decision)
    record.load_balancer = decision.load_balancer.name if decision.load_balancer else None
    record.decision = decision.reason
    record.affinity = decision.affinity
    if decision.fixed is not None:
        return fixed_response(ex, decision.fixed)
    if decision.endpoint is None:
        status = decision.status or errors.NO_POOL
        if status == 404:
            record.error = RequestError.UNKNOWN_HOST
            return reply(ex, 404, b"404 Not Found: no load balancer answers for this host\n")
        record.error = RequestError.NO_POOL
        style = settings.error_style
        return reply(ex, public_status(status, style), error_body(status, style))
    tries = _Tries(decision, req, _budget(ex.shared, decision))
    if tries.budget is None:
        return _attempts(ex, tries)  # one coroutine level less on the common path
    return _budgeted(ex, tries)


def _refusal(ex: Exchange) -> tuple[int, bytes, bool] | None:
    """A request refused before steering: its status, body and whether to close; also sets
    ``record.error``.  None when the request may be steered."""
    record = ex.record
    event, facts = ex.event, ex.facts
    limits = ex.config.engine.limits
    if event.method in _NOT_PROXIED:
        # CONNECT would turn the proxy into an open tunnel, TRACE would reflect headers
        # added on the way (a 200 with an affinity cookie for CONNECT, before).
        record.error = RequestError.METHOD_NOT_SUPPORTED
        return 501, error_body(501, "plain"), True
    if facts.ambiguous_framing:
        record.error = RequestError.AMBIGUOUS_FRAMING
        return 400, b"400 Bad Request: both Content-Length and Transfer-Encoding\n", True
    if not ex.target:
        record.error = RequestError.BAD_TARGET
        return 400, b"400 Bad Request: request-target is not a path or an http(s) URL\n", True
    if (
        facts.head_bytes + len(event.target) > limits.max_header_bytes
        or len(event.headers) > limits.max_headers
    ):
        # The parser's limit is on a head still incomplete (lb/proxy/http1.py).
        record.error = RequestError.HEADERS_TOO_LARGE
        return 431, error_body(431, "plain"), True
    if facts.chunked and not ex.req_done:
        problem = first_chunk_problem(ex.conn, limits.max_body_bytes)
        if problem is not None:
            record.error = problem.reason
            return problem.status, error_body(problem.status, "plain"), False
    if facts.content_length is not None and facts.content_length > limits.max_body_bytes:
        record.error = RequestError.BODY_TOO_LARGE
        return 413, error_body(413, "plain"), False
    return None


async def _budgeted(ex: Exchange, tries: _Tries) -> bool:
    """:func:`_attempts` for a request counted in its load balancer's ``retry_on`` budget
    (``docs/semantics.md``, "Retries beyond Cloudflare") until it is answered."""
    budget = tries.budget
    assert budget is not None
    budget.started()
    try:
        return await _attempts(ex, tries)
    finally:
        budget.finished(Retry.RETRY_ON in tries.retries)


@dataclass(slots=True)
class _Tries:
    """The attempts of one request so far: where it goes next and the retries it had."""

    decision: Decision
    req: Request
    budget: RetryBudget | None
    retries: list[Retry] = field(default_factory=list)
    fresh: bool = False
    """The next attempt dials a fresh connection (every retry does)."""


def _budget(shared: Shared, decision: Decision) -> RetryBudget | None:
    """The retry budget of ``decision``'s load balancer; None when no ``retry_on`` applies to
    it (neither the load balancer nor any pool sets one: the common, Cloudflare-exact case)."""
    config = shared.engine.config  # the newest: the cache below is shared by every request
    if shared.retry_key is not config:
        shared.retry_key = config
        pools = any(p.retry_on is not None for p in config.pools)
        shared.retry_lbs = frozenset(
            lb.name for lb in config.load_balancers if pools or lb.retry_on is not None
        )
    lb = decision.load_balancer
    if lb is None or lb.name not in shared.retry_lbs:
        return None
    budget = shared.budgets.get(lb.name)
    if budget is None:
        budget = shared.budgets[lb.name] = RetryBudget()
    return budget


async def _attempts(ex: Exchange, tries: _Tries) -> bool:
    """Send the request to the decision's endpoint, and again wherever the attempt policy
    says after a failure; relay the response, or answer the last failure."""
    shared = ex.shared
    engine = shared.engine
    settings = ex.config.engine
    record = ex.record
    live = engine.live
    connect_to = ex.config.connect_to
    pool = shared.pool
    live_settings = engine.config.engine  # the pool is shared: the newest config, not ex's
    pool.connect_timeout = live_settings.limits.connect_timeout  # follows reloads
    pool.idle_timeout = live_settings.upstream_idle_timeout
    if ex.req_done:
        ex.body_state = Body.BUFFERED  # bodiless: nothing to wait for (the common case)
    else:
        await buffer_body(ex)
    while True:
        endpoint = tries.decision.endpoint
        assert endpoint is not None
        target = _target(shared, endpoint, record.host, connect_to)
        # One clock read for the checkout and the attempt's start: each costs a few
        # thousand instructions (docs/bench.md, "Fifth look").
        now = trio.current_time()
        up = None if tries.fresh else pool.checkout(target, now)
        attempt = Attempt(
            pool=endpoint.pool, endpoint=endpoint.key, status=0, reused=up is not None
        )
        record.attempts.append(attempt)
        record.pool, record.endpoint = endpoint.pool, endpoint.key
        record.tunnel_id = endpoint.tunnel_id
        live.started(endpoint)
        ex.endpoint = endpoint
        try:
            sending = now
            if up is None:
                ex.advance(Move.DIAL, math.inf)
                up = await pool.connect(target)
                sending = trio.current_time()
                attempt.connect_time = sending - now
            ex.up = up
            response = await forward(ex, up, target.host)
            answered = trio.current_time()
            attempt.first_byte = answered - sending
            early = None
            if tries.budget is not None and type(response) is http1.Response:
                early = await _read_whole(ex, tries, up, response)
        except UpstreamError as err:
            await stop_pump(ex)  # before the checks: it may have taken more body
            attempt.status, attempt.error = err.status, err.reason
            _drop(ex, endpoint)
            failure = failure_of(err)
            engine.outcome(
                endpoint.pool,
                endpoint.name,
                status=err.status,
                failure=failure,
                reused=attempt.reused,
                now=trio.current_time(),
            )  # passive health (off by default), the simulator's too
            step = _after_failure(ex, tries, attempt, failure)
            if step.retry is not None:
                continue
            record.error = err.reason
            style = settings.error_style
            return await reply(
                ex, public_status(step.status, style), error_body(step.status, style)
            )
        attempt.status = response.status_code
        engine.outcome(endpoint.pool, endpoint.name, status=response.status_code, now=answered)
        if tries.budget is not None and type(response) is http1.Response:
            # retry_on may name this status (a 502, 503, 504 from the endpoint): the policy
            # says whether it is retried or relayed as it is.
            rules = _rules(tries.decision)
            if rules is not None and response.status_code in rules.statuses:
                body = ex.body_state if ex.pump is None else Body.STREAMED
                step = _after_failure(
                    ex, tries, attempt, Failure.STATUS, response.status_code, body
                )
                if step.retry is not None:
                    _drop(ex, endpoint)  # its body is not wanted: the connection goes
                    continue
        record.upstream_status = response.status_code
        up.note_response(response.headers)
        try:
            return await relay(ex, up, response, tries.decision, early)
        except UpstreamError as err:
            # The upstream head (or the 101) was refused: nothing reached the client yet
            # unless ``responded``; answer 502 on a connection that closes afterwards.
            attempt.error = err.reason
            record.error = err.reason
            if ex.responded:
                return False
            return await bad_gateway(ex)


async def _read_whole(
    ex: Exchange, tries: _Tries, up: UpstreamConnection, response: http1.Response
) -> list[http1.Data | http1.EndOfMessage] | None:
    """The response body read whole before relaying (``retry_on.buffer_response``: the
    policy's :func:`~lb.core.attempts.buffer_bound` says when), so that a close in it is a
    failure the policy may retry; None when the response is streamed."""
    length: int | None = None
    chunked = False
    for name, value in response.headers:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
    bound = buffer_bound(
        _rules(tries.decision),
        idempotent=idempotent(ex.event.method),
        body=ex.body_state if ex.pump is None else Body.STREAMED,
        bodiless=ex.event.method == b"HEAD",
        status=response.status_code,
        length=length,
        chunked=chunked,
    )
    if not bound:
        return None
    return await read_whole(ex, up, bound)


def _drop(ex: Exchange, endpoint: EndpointView) -> None:
    """An attempt is over without a response to relay: its connection is not reused."""
    ex.shared.engine.live.finished(endpoint)
    ex.endpoint = None
    if ex.up is not None:
        ex.shared.pool.discard(ex.up)
        ex.up = None


def _rules(decision: Decision) -> RetryOn | None:
    """The ``retry_on`` of the decision's pool, else of its load balancer."""
    pool = decision.pool
    return retry_on_for(decision.load_balancer, pool.config if pool is not None else None)


def _after_failure(
    ex: Exchange,
    tries: _Tries,
    attempt: Attempt,
    failure: Failure,
    answered: int = 0,
    body: Body | None = None,
) -> Step:
    """Ask the attempt policy what follows ``attempt``'s ``failure`` and prepare the retry it
    asks for; a step without :attr:`Step.retry` leaves the answer to the caller.

    What follows is the attempt policy's to say (lb/core/attempts.py; the table is in
    docs/proxy.md, "Retries"), the simulator's too.
    """
    shared = ex.shared
    engine = shared.engine
    record = ex.record
    decision = tries.decision
    rules = _rules(decision)
    step = next_step(
        failure,
        reused=attempt.reused,
        body=ex.body_state if body is None else body,
        sent=ex.sent_any,
        replayable=replayable(ex.event.method, ex.facts),
        retries=tries.retries,
        failover_codes=ex.config.engine.zero_downtime_failover_codes,
        idempotent=idempotent(ex.event.method),
        retry_on=rules,
        budget=tries.budget,
        answered=answered,
    )
    if step.refused:
        record.budget_refused = True
        logs.event(
            "retry_budget_refused",
            logging.DEBUG,
            load_balancer=record.load_balancer,
            endpoint=attempt.endpoint,
            reason=step.reason,
        )
    kind = step.retry
    if kind is None:
        return step
    retry = None
    if step.action is not Action.FRESH:
        retry = engine.retry(
            decision,
            tries.req,
            shared.rng,
            status=step.status,
            retry_on=step.action is Action.RETRY,
        )
        if retry is None and step.action is Action.FAILOVER:
            return Step(Action.ANSWER, step.status)  # no healthy alternate: the answer
    if step.budget:
        assert tries.budget is not None
        tries.budget.retrying_now()
    tries.retries.append(kind)
    tries.fresh = True  # every retry goes out on a fresh connection
    record.retried = attempt.retried = kind.value
    record.retry_status = step.status
    if step.reason:
        attempt.retry_on = step.reason
        logs.event(
            "retry_on",
            logging.DEBUG,
            load_balancer=record.load_balancer,
            endpoint=attempt.endpoint,
            reason=step.reason,
            to=retry.endpoint.key if retry is not None and retry.endpoint else attempt.endpoint,
        )
    shared.hooks.retry(kind.value, attempt)
    if retry is not None:
        tries.decision = retry
        shared.hooks.decision(retry)
        record.decision = retry.reason
    return step


async def forward(
    ex: Exchange, up: UpstreamConnection, host: str
) -> http1.Response | http1.InformationalResponse:
    """Send the request (head and streamed body) on ``up``; return the response head, which
    may come while the body is still being sent (see below)."""
    shared = ex.shared
    limits = ex.config.engine.limits
    ip_name = shared.names[0]
    event = ex.event
    conn = ex.conn
    # Every value sent is from the parser (client and upstream heads), generated here (IPs,
    # ids, cookies), or from the configuration and checked once here: the endpoint Host and
    # the client-IP header name (the writer refuses control characters anyway).
    if not safe_header_value(host) or not safe_header_name(ip_name):
        raise UpstreamError(errors.BAD_GATEWAY, RequestError.BAD_CONFIG)
    out_headers = upstream_headers(
        event.headers,
        ex.facts,
        host=host.encode("latin-1"),
        peer_ip=ex.peer.encode("latin-1"),
        client_ip=ex.client_ip.encode("latin-1"),
        client_ip_name=ip_name,
        proto=b"https" if ex.https else b"http",
        trusted=ex.trusted,
        request_id=ex.request_id,
    )
    uh = up.http
    try:
        pending = [
            uh.send(http1.Request(method=event.method, target=ex.target, headers=out_headers))
        ]
    except http1.LocalProtocolError as exc:
        raise ClientError(400, RequestError.BAD_REQUEST) from exc
    body = ex.body
    if body:
        pending.extend([up_send(uh, ev) for ev in body])
        if ex.body_state is not Body.BUFFERED:
            ex.body = []  # streamed from here on: these bytes are gone once sent
    if not ex.req_done:
        more: list[http1.Data] = []
        take_body(ex, more, limits.max_body_bytes)
        pending.extend([up_send(uh, ev) for ev in more])
    if ex.req_done:
        pending.append(up_send(uh, EOM))
    await send_up(ex, up.stream, pending, limits.request_timeout)
    if ex.req_done:
        return await _response_head(ex, up)
    # The rest of the body is still on its way from the client.  It is pumped upstream by
    # a task of its own while this one waits for the response head, as Go's transport
    # does: an upstream may answer before it has read the body (a 413, a 401, a redirect)
    # and then stop reading or close, and that answer is relayed rather than turned into
    # a 524 or a 502.  The client is told to continue first (Expect: 100-continue), so
    # that the pump never writes to the client while the response may be relayed.
    if conn.they_are_waiting_for_100_continue:
        ex.advance(Move.CLIENT, limits.idle_timeout)
        continue_ = http1.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
        try:
            await ex.stream.send_all(conn.send(continue_))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ClientError(0, RequestError.CLIENT_DISCONNECTED) from exc
    assert ex.tasks is not None
    pump = BodyPump()
    ex.pump = pump
    ex.tasks.start_soon(pump_body, ex, up, pump)
    with trio.CancelScope() as pump.head_wait:
        head = await _response_head(ex, up)
        pump.head_wait = None
        if not isinstance(pump.error, ClientError):
            return head
    pump.head_wait = None
    assert isinstance(pump.error, ClientError)
    raise pump.error  # the client's body failed first: answer that (400, 413...)


async def _response_head(
    ex: Exchange, up: UpstreamConnection
) -> http1.Response | http1.InformationalResponse:
    """Read the upstream response head (1xx other than a WebSocket 101 are skipped)."""
    uh = up.http
    ustream = up.stream
    got = False
    while True:
        try:
            ev = uh.next_event()
        except http1.RemoteProtocolError as exc:
            raise UpstreamError(errors.BAD_GATEWAY, RequestError.UPSTREAM_PROTOCOL) from exc
        if ev is http1.NEED_DATA:
            # The deadline armed by send_up covers the wait for the whole head.
            try:
                data = await ustream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise UpstreamError(
                    errors.BAD_GATEWAY, RequestError.UPSTREAM_CLOSED, before_response=not got
                ) from exc
            if not data:
                raise UpstreamError(
                    errors.BAD_GATEWAY, RequestError.UPSTREAM_CLOSED, before_response=not got
                )
            got = True
            uh.receive_data(data)
            continue
        if type(ev) is http1.Response:
            assert isinstance(ev, http1.Response)
            return ev
        if type(ev) is http1.InformationalResponse:
            assert isinstance(ev, http1.InformationalResponse)
            if ev.status_code == 101 and ex.facts.websocket:
                return ev
            if ev.status_code == 101:
                raise UpstreamError(errors.BAD_GATEWAY, RequestError.UPSTREAM_PROTOCOL)
            continue  # 100 Continue, 103 Early Hints: not relayed
        raise UpstreamError(errors.BAD_GATEWAY, RequestError.UPSTREAM_PROTOCOL)


async def relay(
    ex: Exchange,
    up: UpstreamConnection,
    response: http1.Response | http1.InformationalResponse,
    decision: Decision,
    early: list[http1.Data | http1.EndOfMessage] | None = None,
) -> bool:
    """Send the response downstream, streaming its body; True to keep the connection.

    ``early``: the body events already read (``retry_on.buffer_response``), sent first."""
    shared = ex.shared
    limits = ex.config.engine.limits
    record = ex.record
    conn = ex.conn
    set_cookie = _set_cookie(decision, ex.https)
    status = response.status_code
    reason = response.reason or reason_phrase(status)
    if type(response) is http1.InformationalResponse:
        pump = ex.pump
        if pump is not None and not pump.done.is_set():
            # A 101 before the upgrade request's body is through: splicing would read the
            # client and write upstream beside the pump.  Refused as a bad upstream answer.
            raise UpstreamError(errors.BAD_GATEWAY, RequestError.UPSTREAM_PROTOCOL)
        return await splice(ex, up, response, set_cookie)
    headers = response_headers(response.headers, set_cookie=set_cookie, close=shared.draining)
    try:
        pending = [conn.send(http1.Response(status_code=status, headers=headers, reason=reason))]
    except http1.LocalProtocolError as exc:
        raise UpstreamError(errors.BAD_GATEWAY, RequestError.UPSTREAM_PROTOCOL) from exc
    ex.advance(Move.RESPOND)
    record.status = status
    uh: http1.Connection | Replay = up.http if early is None else Replay(early, up.http)
    ustream = up.stream
    while True:
        try:
            ev = uh.next_event()
        except http1.RemoteProtocolError:
            record.error = RequestError.UPSTREAM_ABORTED
            await flush_down(ex, pending, limits.idle_timeout)
            return False
        kind = type(ev)
        if kind is http1.Data:
            assert isinstance(ev, http1.Data)
            record.bytes_out += len(ev.data)
            pending.append(conn.send(ev))
        elif kind is http1.EndOfMessage:
            pending.append(conn.send(EOM))
            break
        elif ev is http1.NEED_DATA:
            if pending:
                await flush_down(ex, pending, limits.idle_timeout)
                pending = []
            ex.advance(Move.UPSTREAM, limits.request_timeout)
            try:
                data = await ustream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                record.error = RequestError.UPSTREAM_ABORTED
                return False
            uh.receive_data(data)
        else:
            record.error = RequestError.UPSTREAM_ABORTED
            break
    # The upstream exchange is over: free the connection before the last write, which
    # runs under the deadline already armed (no extra deadline update on the hot path).
    shared.engine.live.finished(up.endpoint)
    ex.endpoint = None
    ex.up = None
    pump = ex.pump
    if pump is not None and (not pump.done.is_set() or pump.error is not None):
        # The upstream answered before taking the whole body (the rest is not wanted, and
        # the connection must not go back to the pool while the pump may write on it), or
        # the pump's last write failed after the parser had marked the request complete.
        pump.scope.cancel()
        shared.pool.discard(up)
    else:
        shared.pool.release(up)
    await flush_down(ex, pending, 0.0)
    return not record.error


def _set_cookie(decision: Decision, https: bool) -> bytes | None:
    """The affinity cookie to set with the response, if the decision asks for one."""
    lb = decision.load_balancer
    value = decision.set_cookie
    if value is None or lb is None:
        return None
    attrs = lb.session_affinity_attributes
    ttl = float(lb.effective_affinity_ttl)
    expires = expires_of(value)
    if expires is not None:
        # A rewritten (sticky) cookie keeps its expiry: Max-Age must not extend it.
        ttl = max(0.0, min(ttl, math.ceil(expires - time.time())))
    return affinity_cookie(value, ttl, samesite=attrs.samesite, secure=attrs.secure, https=https)


# ---------------------------------------------------------------------- per-config caches


def _header_names(shared: Shared, settings: EngineSettings) -> tuple[bytes, bytes]:
    if shared.names_key is not settings:
        shared.names_key = settings
        shared.names = (
            settings.client_ip_header.lower().encode("latin-1"),
            settings.datacenter_header.lower().encode("latin-1"),
        )
    return shared.names


def _target(
    shared: Shared, endpoint: EndpointView, host: str, connect_to: Mapping[str, str]
) -> Target:
    """:func:`target_for`, remembered per endpoint and client Host (the client's Host only
    matters to an endpoint without a Host of its own) until ``connect_to`` or the endpoint's
    view changes: it normalises names and parses addresses, the same every time."""
    if shared.targets_key is not connect_to:
        shared.targets_key = connect_to
        shared.targets = {}
    key = (endpoint.pool, endpoint.name, "" if endpoint.host else host)
    found = shared.targets.get(key)
    if found is None or found.endpoint is not endpoint:
        if len(shared.targets) > 4096:
            shared.targets.clear()
        found = shared.targets[key] = target_for(endpoint, host, connect_to)
    return found


def _is_trusted(shared: Shared, peer: str, settings: EngineSettings) -> bool:
    """Whether ``peer`` is in ``engine.trusted_proxies`` (cached per peer and config)."""
    if shared.trust_key is not settings.trusted_proxies:
        shared.trust_key = settings.trusted_proxies
        shared.trusted_nets = tuple(ip_network(c, strict=False) for c in settings.trusted_proxies)
        shared.trusted_cache = {}
    if not shared.trusted_nets:
        return False
    found = shared.trusted_cache.get(peer)
    if found is None:
        try:
            addr = ip_address(peer)
            found = any(addr in net for net in shared.trusted_nets)
        except ValueError:
            found = False
        if len(shared.trusted_cache) > 4096:
            shared.trusted_cache.clear()
        shared.trusted_cache[peer] = found
    return found


def _client_country(headers: Sequence[tuple[bytes, bytes]], settings: EngineSettings) -> str:
    """The client country a trusted proxy sent (``engine.client_country_header``), or ""."""
    name = settings.client_country_header.lower().encode("latin-1")
    for key, value in headers:
        if key == name:
            return client_country(value.decode("latin-1"))
    return ""


# ---------------------------------------------------------------------- lazy request views


class _Lazy(Mapping[str, str]):
    """A mapping built on first use: steering reads headers and cookies only for header
    affinity, so most requests never pay for building them."""

    __slots__ = ("_built", "_raw")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self._built: dict[str, str] | None = None

    def _build(self) -> dict[str, str]:
        raise NotImplementedError

    def _dict(self) -> dict[str, str]:
        built = self._built
        if built is None:
            built = self._built = self._build()
        return built

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())


class _LazyHeaders(_Lazy):
    """The request headers by name, for header affinity and custom rules, built on first use.

    Only a load balancer with ``session_affinity: header`` or custom rules reads them, so the
    dict costs nothing on every other request.  Names are the parser's, already lowercase; of a
    repeated header the last value counts, except Cookie, whose values are joined with "; "
    as one header would carry them (``http.cookie``).
    """

    __slots__ = ()

    def _build(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for n, v in self._raw:
            name, value = n.decode("latin-1"), v.decode("latin-1")
            if name == "cookie" and name in out:
                value = f"{out[name]}; {value}"
            out[name] = value
        return out


class _LazyCookies(_Lazy):
    """Every cookie of the request, for header affinity, parsed on first use."""

    __slots__ = ()

    def _build(self) -> dict[str, str]:
        return parse_cookies(self._raw)
