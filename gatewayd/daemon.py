"""Run the gateway in the foreground: bind, serve, reload on HUP, drain on TERM.

The same Daemon serves alone (server.workers: 1, reporting to systemd) or as
one worker under gatewayd.arbiter (reporting to the arbiter through a pipe);
the Supervisor it is given is the only difference besides SO_REUSEPORT.

Signal handlers only put the signal on a queue; the main loop dispatches it
(as gunicorn's arbiter does), so no work happens inside a handler.

Reload builds the new runtime completely (parse, validate, compile, open its
clients) before swapping it in; if any step fails, the running generation
keeps serving and the failure is logged and counted. Requests already in
flight, open streams included, finish on the generation they started on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Protocol

import uvloop
from aiohttp import web

from gatewayd import __version__, systemd
from gatewayd.app import make_app
from gatewayd.audit.writer import AuditWriter
from gatewayd.config import load
from gatewayd.config.schema import Config, ServerConfig
from gatewayd.errors import ConfigError
from gatewayd.observability import health, metrics
from gatewayd.observability import logging as gw_logging
from gatewayd.runtime import Runtime, RuntimeHolder, build_runtime

log = logging.getLogger(__name__)

# What a worker tells its arbiter (gatewayd.arbiter) through its pipe, one byte each.
READY = b"r"
RELOADED = b"h"
RELOAD_FAILED = b"f"
# How often a worker checks that its arbiter is still there.
ORPHAN_CHECK = 1.0


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


def serve_worker(config: Config, generation: int, report: int, arbiter: int) -> int:
    """Serve as a forked worker of `arbiter` (a pid), reporting through the pipe fd `report`."""
    daemon = Daemon(config, generation=generation, supervisor=ArbiterPipe(report), reuse_port=True)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve_until_orphaned(daemon, arbiter))


async def _serve_until_orphaned(daemon: Daemon, arbiter: int) -> int:
    watch = asyncio.create_task(_watch_arbiter(arbiter))
    try:
        return await daemon.serve()
    finally:
        watch.cancel()


async def _watch_arbiter(arbiter: int) -> None:
    """Drain and exit, as on SIGTERM, once the arbiter is gone.

    Polling getppid once a second rather than prctl(PR_SET_PDEATHSIG): no
    ctypes, no race with an arbiter that died before the call, and the worker
    drains its requests instead of being killed mid-stream.
    """
    while os.getppid() == arbiter:  # noqa: ASYNC110 - nothing announces a parent's death
        await asyncio.sleep(ORPHAN_CHECK)
    log.warning("arbiter is gone; stopping", extra={"fields": {"pid": os.getpid()}})
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor(Protocol):
    """Who hears how this process is doing: systemd itself, or a worker's arbiter."""

    def ready(self, status: str) -> None: ...

    def reloading(self) -> None: ...

    def reloaded(self, ok: bool, status: str) -> None: ...

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

    def stopping(self) -> None:
        """STOPPING=1."""
        systemd.stopping()


class ArbiterPipe:
    """A worker's Supervisor: one byte to the arbiter per event, never to systemd."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def ready(self, status: str) -> None:
        """Listening: the arbiter says READY=1 once every worker is."""
        self._send(READY)

    def reloading(self) -> None:
        """Nothing: the arbiter said RELOADING=1 before it forwarded SIGHUP."""

    def reloaded(self, ok: bool, status: str) -> None:
        """The result the arbiter waits for before READY=1."""
        self._send(RELOADED if ok else RELOAD_FAILED)

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
        reuse_port: bool = False,
    ) -> None:
        self._source: Path = config.source
        self._generation = generation
        self._supervisor = supervisor or Systemd()
        self._reuse_port = reuse_port
        self._holder = RuntimeHolder(build_runtime(config, self._generation))
        self._audit = AuditWriter(config.audit)
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._retiring: set[asyncio.Task[None]] = set()

    async def serve(self) -> int:
        """Listen, report ready, then reload on HUP until TERM or INT drains; the exit code."""
        config = self._holder.current.config
        app = make_app(self._holder, self._audit)
        runner = make_runner(app, config.server)
        await runner.setup()
        listen = config.server.listen
        site = web.TCPSite(
            runner, listen.host, listen.port, backlog=1024, reuse_port=self._reuse_port
        )
        try:
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
            sig = await self._signals.get()
            if sig is signal.SIGHUP:
                await self.reload()
            else:
                break

        log.info("draining", extra={"fields": {"signal": sig.name, "pid": os.getpid()}})
        self._supervisor.stopping()
        app[health.HEALTH].draining = True
        # Stop accepting, let in-flight requests (streams too) finish within
        # shutdown_timeout, cancel the rest, then unwind the cleanup contexts.
        await runner.cleanup()
        for task in self._retiring:
            task.cancel()
        log.info("stopped", extra={"fields": {"pid": os.getpid()}})
        return 0

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)

    async def reload(self) -> bool:
        """Swap in the config file as it is now, or keep serving the old one."""
        self._supervisor.reloading()
        old = self._holder.current
        try:
            config = await asyncio.to_thread(load, self._source)
            runtime = build_runtime(config, self._generation + 1)
            await runtime.start()
        except ConfigError as exc:
            return self._reload_failed(old, [str(p) for p in exc.problems])
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old config
            return self._reload_failed(old, [f"{type(exc).__name__} while starting"])
        _warn_static(old.config, config)
        self._generation += 1
        self._holder.current = runtime
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
    if old.audit != new.audit:
        log.warning("audit settings changed: restart gatewayd to apply them")


def _address(runner: web.AppRunner) -> str | None:
    """Where the listener actually bound (the port matters when config says 0)."""
    for address in runner.addresses:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None
