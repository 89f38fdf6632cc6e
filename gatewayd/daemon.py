"""Run the gateway in the foreground: bind, serve, reload on HUP, drain on TERM.

The same Daemon serves alone (server.workers: 1, reporting to systemd) or as
one worker under gatewayd.arbiter (reporting to the arbiter through a pipe);
the Supervisor it is given is the only difference besides the listener:
a lone process binds its own, a worker serves the arbiter's sockets (see
gatewayd.arbiter), reports a heartbeat, and with server.max_requests retires:
it stops accepting, answers each further request with `Connection: close`,
and exits once its connections are gone, while the arbiter's replacement
already serves.

Signal handlers only put the signal on a queue; the main loop dispatches it
(as gunicorn's arbiter does), so no work happens inside a handler.

Reload builds the new runtime completely (parse, validate, compile, open its
clients) before swapping it in; if any step fails, the running generation
keeps serving and the failure is logged and counted. Requests already in
flight, open streams included, finish on the generation they started on.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import random
import signal
import socket
from pathlib import Path
from typing import Literal, Protocol

import uvloop
from aiohttp import web

from gatewayd import __version__, systemd
from gatewayd.app import make_app
from gatewayd.audit.writer import AuditWriter
from gatewayd.config import load
from gatewayd.config.schema import Config, RateLimitConfig, ServerConfig, TlsConfig
from gatewayd.errors import ConfigError
from gatewayd.observability import health, metrics
from gatewayd.observability import logging as gw_logging
from gatewayd.ratelimit.limiter import Limiter
from gatewayd.redis_client import RedisClients
from gatewayd.runtime import Runtime, RuntimeHolder, build_runtime
from gatewayd.tls import Prepared, TlsError, TlsListener, expiry_warning

log = logging.getLogger(__name__)

# What a worker tells its arbiter (gatewayd.arbiter) through its pipe, one byte each.
READY = b"r"
RELOADED = b"h"
RELOAD_FAILED = b"f"
# Served server.max_requests: draining, the arbiter starts a replacement.
RETIRING = b"m"
# The loop turns; sent every HEARTBEAT_SHARE of server.worker_timeout at most.
HEARTBEAT = b"a"
HEARTBEAT_SHARE = 0.25
# How often a worker checks that its arbiter is still there (and at most how
# long between heartbeats).
ORPHAN_CHECK = 1.0
# Makes a worker write every thread's Python stack to stderr (faulthandler,
# from C, so also while its loop is stuck): the arbiter sends it before it
# kills a worker whose heartbeat stopped, so the log says where it hung.
STACKS = signal.SIGUSR2
# How often a retiring worker looks whether its last connection has closed.
RETIRE_POLL = 0.05

# What the serving loop waits for: a signal, or having served max_requests.
Event = signal.Signals | Literal["retire"]


def make_runner(app: web.Application, server: ServerConfig) -> web.AppRunner:
    """The runner the daemon (and the tests) serve the app with."""
    return web.AppRunner(
        app,
        access_log=None,
        # A client that disconnects cancels its handler, which closes the
        # upstream request: an abandoned completion stops being generated.
        handler_cancellation=True,
        # Also bounds how long a new connection may take to send its headers.
        keepalive_timeout=server.read_timeout,
        shutdown_timeout=server.shutdown_timeout,
    )


def run(config: Config) -> int:
    """Serve until SIGTERM or SIGINT; the process exit code."""
    gw_logging.configure(config.logging)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(Daemon(config).serve())


def serve_worker(
    config: Config,
    generation: int,
    report: int,
    arbiter: int,
    sockets: list[socket.socket],
) -> int:
    """Serve `sockets` as a forked worker of `arbiter` (a pid), reporting through fd `report`."""
    pipe = ArbiterPipe(report)
    server = config.server
    # Jitter spreads the retirements, so workers started together do not all
    # drain at once.
    limit = (
        server.max_requests + random.randint(0, server.max_requests_jitter)
        if server.max_requests is not None
        else None
    )
    daemon = Daemon(
        config, generation=generation, supervisor=pipe, sockets=sockets, max_requests=limit
    )
    beat = min(ORPHAN_CHECK, server.worker_timeout * HEARTBEAT_SHARE)
    faulthandler.register(STACKS, all_threads=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve_until_orphaned(daemon, arbiter, pipe, beat))


async def _serve_until_orphaned(
    daemon: Daemon, arbiter: int, pipe: ArbiterPipe, beat: float
) -> int:
    watch = asyncio.create_task(_watch_arbiter(arbiter, pipe, beat))
    try:
        return await daemon.serve()
    finally:
        watch.cancel()


async def _watch_arbiter(arbiter: int, pipe: ArbiterPipe, beat: float) -> None:
    """A heartbeat every `beat` seconds; drain and exit, as on SIGTERM, once the arbiter is gone.

    The heartbeat is sent from the loop itself, so a loop stuck in one
    callback stops it and the arbiter replaces the worker (server.worker_timeout).
    Polling getppid rather than prctl(PR_SET_PDEATHSIG): no ctypes, no race
    with an arbiter that died before the call, and the worker drains its
    requests instead of being killed mid-stream.
    """
    while os.getppid() == arbiter:  # nothing announces a parent's death
        pipe.alive()
        await asyncio.sleep(beat)
    log.warning("arbiter is gone; stopping", extra={"fields": {"pid": os.getpid()}})
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor(Protocol):
    """Who hears how this process is doing: systemd itself, or a worker's arbiter."""

    def ready(self, status: str) -> None: ...

    def reloading(self) -> None: ...

    def reloaded(self, ok: bool, status: str) -> None: ...

    def retiring(self) -> None: ...

    def stopping(self) -> None: ...


class Systemd:
    """A lone process: sd_notify straight to systemd, and its own count of reloads."""

    def ready(self, status: str) -> None:
        """Listening (or done reloading): READY=1."""
        systemd.ready(status=status)

    def reloading(self) -> None:
        """RELOADING=1 with its timestamp."""
        systemd.reloading()

    def reloaded(self, ok: bool, status: str) -> None:
        """Count the reload and say READY=1 again, whatever its result."""
        # Counted by whoever systemd asked to reload; under an arbiter that
        # is the arbiter, once per reload rather than once per worker.
        metrics.CONFIG_RELOADS.labels("success" if ok else "error").inc()
        systemd.ready(status=status)

    def retiring(self) -> None:
        """Nothing: without workers the config refuses server.max_requests."""

    def stopping(self) -> None:
        """STOPPING=1."""
        systemd.stopping()


class ArbiterPipe:
    """A worker's Supervisor: one byte to the arbiter per event, never to systemd."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        # A heartbeat goes every second: should the arbiter stop reading, a
        # full pipe must drop bytes, not block this worker's loop.
        os.set_blocking(fd, False)

    def ready(self, status: str) -> None:
        """Listening: the arbiter says READY=1 once every worker is."""
        self._send(READY)

    def reloading(self) -> None:
        """Nothing: the arbiter said RELOADING=1 before it forwarded SIGHUP."""

    def reloaded(self, ok: bool, status: str) -> None:
        """The result the arbiter waits for before READY=1."""
        self._send(RELOADED if ok else RELOAD_FAILED)

    def retiring(self) -> None:
        """Draining after max_requests: the arbiter starts the replacement now."""
        self._send(RETIRING)

    def alive(self) -> None:
        """The heartbeat: this worker's loop still turns."""
        self._send(HEARTBEAT)

    def stopping(self) -> None:
        """Nothing: the arbiter said STOPPING=1 before it forwarded SIGTERM."""

    def _send(self, event: bytes) -> None:
        try:
            os.write(self._fd, event)
        except OSError:
            # The arbiter is gone; the orphan check stops this worker.
            log.debug("arbiter pipe closed", extra={"fields": {"pid": os.getpid()}})


class Daemon:
    """One serving process: the app on its listener, swapped runtimes, a signal queue."""

    def __init__(
        self,
        config: Config,
        *,
        generation: int = 1,
        supervisor: Supervisor | None = None,
        sockets: list[socket.socket] | None = None,
        max_requests: int | None = None,
    ) -> None:
        self._source: Path = config.source
        self._generation = generation
        self._supervisor = supervisor or Systemd()
        # Bound by the arbiter (shared by every worker); None binds server.listen.
        self._sockets = sockets
        self._redis = RedisClients()
        self._holder = RuntimeHolder(build_runtime(config, self._generation, self._redis))
        self._audit = AuditWriter(config.audit)
        self._limiter = Limiter(config.ratelimit, self._redis)
        self._tls: TlsListener | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._retiring: set[asyncio.Task[None]] = set()
        self._max_requests = max_requests
        self._served = 0
        self._closing = False

    async def serve(self) -> int:
        """Listen, report ready, then reload on HUP until TERM or INT drains; the exit code."""
        config = self._holder.current.config
        tls = config.server.tls
        if tls is not None:
            try:
                self._tls = TlsListener(tls)
            except TlsError as exc:
                log.error("cannot serve TLS: %s", exc)
                return 1
            _warn_expiry(tls)
            metrics.TLS_CERT_EXPIRY.set(self._tls.info.not_after.timestamp())
        app = make_app(self._holder, self._audit, self._limiter, self._redis)
        app[health.HEALTH].tls = self._tls
        if self._max_requests is not None:
            app.on_response_prepare.append(self._count)
        runner = make_runner(app, config.server)
        await runner.setup()
        listen = config.server.listen
        sites = self._sites(runner, config.server)
        try:
            for site in sites:
                await site.start()
        except OSError as exc:
            log.error("cannot listen on %s: %s", listen, exc.strerror)
            await runner.cleanup()
            return 1
        self._install_signals()
        metrics.CONFIG_GENERATION.set(self._generation)
        log.info(
            "gatewayd %s listening on %s",
            __version__,
            _address(runner) or listen,
            extra={
                "fields": {
                    "generation": self._generation,
                    "config": str(self._source),
                    "pid": os.getpid(),
                }
            },
        )
        self._supervisor.ready(f"serving on {listen}, config generation {self._generation}")

        while True:
            event = await self._events.get()
            if event is signal.SIGHUP:
                await self.reload()
            elif event == "retire":
                event = await self._retire(runner, sites)
                break
            else:
                break

        reason = event.name if isinstance(event, signal.Signals) else "max_requests"
        log.info("draining", extra={"fields": {"signal": reason, "pid": os.getpid()}})
        self._supervisor.stopping()
        app[health.HEALTH].draining = True
        # Stop accepting, let in-flight requests (streams too) finish within
        # shutdown_timeout, cancel the rest, then unwind the cleanup contexts.
        await runner.cleanup()
        for task in self._retiring:
            task.cancel()
        log.info("stopped", extra={"fields": {"pid": os.getpid()}})
        return 0

    def _sites(self, runner: web.AppRunner, server: ServerConfig) -> list[web.BaseSite]:
        context = self._tls.context if self._tls is not None else None
        if self._sockets is None:
            listen = server.listen
            return [
                web.TCPSite(
                    runner, listen.host, listen.port, backlog=server.backlog, ssl_context=context
                )
            ]
        return [web.SockSite(runner, sock, ssl_context=context) for sock in self._sockets]

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._events.put_nowait, sig)

    async def _count(self, request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: count toward max_requests; once retiring, close after each."""
        if self._closing:
            response.force_close()
            response.headers["Connection"] = "close"
            return
        self._served += 1
        if self._max_requests is not None and self._served >= self._max_requests:
            self._closing = True
            response.force_close()
            response.headers["Connection"] = "close"
            self._events.put_nowait("retire")

    async def _retire(self, runner: web.AppRunner, sites: list[web.BaseSite]) -> Event:
        """Stop accepting, wait until the clients have closed; what ended the wait.

        The listening sockets stay open in the arbiter and the other workers,
        so connections waiting to be accepted go to them, not to an RST. A
        keep-alive connection ends after its next response (Connection:
        close), so no request races an idle close; an idle one is closed by
        aiohttp after read_timeout, as always. The wait is bounded by the
        longest a request may take (its upstream's total_timeout), so a
        retirement never cuts a stream short.
        """
        log.info(
            "served max_requests; retiring",
            extra={"fields": {"requests": self._served, "pid": os.getpid()}},
        )
        self._supervisor.retiring()
        for site in sites:
            await site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._holder.current.longest_request
        while runner.server is not None and runner.server.connections and loop.time() < deadline:
            try:
                event = await asyncio.wait_for(self._events.get(), RETIRE_POLL)
            except TimeoutError:
                continue
            # TERM or INT ends the wait at once; a reload is pointless now.
            if event is not signal.SIGHUP:
                return event
        return "retire"

    async def reload(self) -> bool:
        """Swap in the config file as it is now, or keep serving the old one."""
        self._supervisor.reloading()
        old = self._holder.current
        try:
            config = await asyncio.to_thread(load, self._source)
            certificate = self._prepare_tls(config)
            runtime = build_runtime(config, self._generation + 1, self._redis)
            await runtime.start()
        except ConfigError as exc:
            return self._reload_failed(old, [str(p) for p in exc.problems])
        except TlsError as exc:
            return self._reload_failed(old, [str(exc)])
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old config
            return self._reload_failed(old, [f"{type(exc).__name__} while starting"])
        _warn_static(old.config, config)
        self._generation += 1
        self._holder.current = runtime
        if self._tls is not None and certificate is not None:
            # New connections shake hands with the new certificate; open ones
            # (a stream included) keep theirs until they end.
            self._tls.swap(certificate)
            metrics.TLS_CERT_EXPIRY.set(certificate.info.not_after.timestamp())
        gw_logging.configure(config.logging)
        metrics.CONFIG_GENERATION.set(self._generation)
        # Like nginx's old workers, the old generation lives until its last
        # request ends (long streams included), which total_timeout bounds.
        task = asyncio.create_task(old.close(drain_timeout=old.longest_request))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info(
            "configuration reloaded",
            extra={"fields": {"generation": self._generation, "pid": os.getpid()}},
        )
        self._supervisor.reloaded(True, f"serving, config generation {self._generation}")
        return True

    def _prepare_tls(self, config: Config) -> Prepared | None:
        """A context from the certificate files as they are now; TlsError if unusable."""
        tls = config.server.tls
        if self._tls is None or tls is None:
            return None
        for key in self._tls.restart_needed(tls):
            log.warning("%s changed: restart gatewayd to apply it", key)
        prepared = self._tls.prepare(tls)
        _warn_expiry(tls)
        return prepared

    def _reload_failed(self, old: Runtime, problems: list[str]) -> bool:
        for problem in problems:
            log.error("reload failed: %s", problem)
        log.error(
            "reload failed, still serving the previous configuration",
            extra={"fields": {"generation": old.generation, "pid": os.getpid()}},
        )
        self._supervisor.reloaded(
            False, f"reload failed; serving config generation {old.generation}"
        )
        return False


def _warn_static(old: Config, new: Config) -> None:
    """Say which changes only a restart applies: the listener and the audit sink."""
    if old.server.listen != new.server.listen:
        log.warning("server.listen changed: restart gatewayd to apply it")
    if (old.server.tls is None) != (new.server.tls is None):
        log.warning("server.tls added or removed: restart gatewayd to apply it")
    if old.audit != new.audit:
        log.warning("audit settings changed: restart gatewayd to apply them")
    if _limiter_backend(old.ratelimit) != _limiter_backend(new.ratelimit):
        log.warning("the rate limiter's backend changed: restart gatewayd to apply it")


def _limiter_backend(config: RateLimitConfig) -> tuple[object, ...]:
    """What the process's limiter was built from; the limits themselves reload."""
    return (config.backend, config.redis_url, config.redis_timeout, config.max_keys)


def _warn_expiry(tls: TlsConfig) -> None:
    """Log when the certificate expires within tls.EXPIRY_WARNING."""
    warning = expiry_warning(tls)
    if warning is not None:
        log.warning("%s", warning)


def _address(runner: web.AppRunner) -> str | None:
    """Where the listener actually bound (the port matters when config says 0)."""
    for address in runner.addresses:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None
