"""The arbiter: with server.workers > 1, one small process that never serves
traffic forks the workers and supervises them, as gunicorn's arbiter and
nginx's master process do.

    arbiter   systemd's main pid: binds the listener, sd_notify, signals,
      │       config validation
      ├── worker   Daemon.serve on the arbiter's  ─┐  one byte per event on
      ├── worker   listening sockets (whichever    ├─ its own pipe: ready,
      └── worker   is idle accepts)               ─┘  reloaded, reload failed,
                                                      retiring, heartbeat

The arbiter binds `server.listen` itself and the workers inherit the
sockets, as gunicorn's do: a worker that stops accepting (retiring, hung,
dead) leaves its waiting connections in the shared queue for the others,
where with one SO_REUSEPORT socket per worker they would be reset.

The arbiter forks before any event loop exists and runs a plain select loop.
Signal handlers do nothing: `signal.set_wakeup_fd` writes each signal's number
to a pipe the loop watches, and the loop dispatches HUP (validate, forward,
wait for every worker's result, READY=1), TERM/INT (forward, wait for the
drain, kill stragglers) and CHLD (reap, respawn with a backoff, give up after
a burst of crashes as systemd's start limit does).

Two more ways a worker is replaced. One that has served server.max_requests
says it is retiring: its replacement is forked at once and the old one
drains on its own. One whose heartbeat (a byte every second or so, written
by its event loop) has been silent for server.worker_timeout is stuck, in a
regex or a C call that never yields: it is told to write every thread's
stack to its stderr (the journal), then killed and respawned like a worker
that died.

Import this module only once $PROMETHEUS_MULTIPROC_DIR is set (gatewayd.cli
does): it imports the daemon, and with it prometheus_client.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import selectors
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from prometheus_client.multiprocess import mark_process_dead

from gatewayd import systemd
from gatewayd.config import load
from gatewayd.config.schema import Config, Listen
from gatewayd.daemon import READY, RELOAD_FAILED, RELOADED, RETIRING, STACKS, serve_worker
from gatewayd.errors import ConfigError
from gatewayd.observability import logging as gw_logging
from gatewayd.observability import metrics

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)

# Like systemd's StartLimitBurst=5 in StartLimitIntervalSec=10s: more crashes
# than this within the interval and the arbiter stops, so a worker that dies
# at once every time is not respawned forever (systemd may restart us all).
START_LIMIT_BURST = 5
START_LIMIT_INTERVAL = 10.0
# Respawn delay after the n-th recent crash: 0.1 s doubled each time, so the
# burst is reached in about 3 s, well inside the interval.
RESPAWN_BACKOFF = 0.1
# Past shutdown_timeout a worker still closes its audit writer (up to 5 s)
# and its clients; after this much more it is killed.
STOP_GRACE = 10.0
# A stuck worker gets this long to write its stacks (STACKS) before SIGKILL.
STACKS_GRACE = 0.5


def run(config: Config) -> int:
    """Serve with config.server.workers forked workers under this process; the exit code."""
    if metrics.MULTIPROC_DIR is None:
        raise RuntimeError("PROMETHEUS_MULTIPROC_DIR must be set before metrics are imported")
    gw_logging.configure(config.logging)
    return Arbiter(config).run()


@dataclass(eq=False)
class Worker:
    pid: int
    pipe: int
    # When it last wrote anything (monotonic): a heartbeat or an event.
    seen: float
    ready: bool = False
    # Reload results this worker still owes the arbiter.
    reloads: int = 0
    # Draining after max_requests; its replacement is already forked.
    retiring: bool = False
    # Its heartbeat went silent: when it is to be killed (after its stacks
    # are written), infinity once it has been.
    kill_at: float | None = None

    @property
    def hung(self) -> bool:
        return self.kill_at is not None


class Arbiter:
    """Forks the workers, relays signals to them, and replaces the ones that die."""

    def __init__(self, config: Config) -> None:
        self._pid = os.getpid()
        self._boot = config
        # What a worker forked now serves: the last config that validated,
        # with what only a restart changes kept from the boot config.
        self._config = config
        self._generation = 1
        self._workers: dict[int, Worker] = {}
        self._selector = selectors.DefaultSelector()
        self._wakeup, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wakeup, selectors.EVENT_READ)
        self._booted = False
        self._stopping = False
        self._stop_deadline = 0.0
        self._killed = False
        self._exit_code = 0
        self._hup_wanted = False
        self._reloading = False
        self._reload_failures = 0
        self._reload_deadline = 0.0
        self._crashes: deque[float] = deque()
        self._respawns: list[float] = []
        self._sockets: list[socket.socket] = []

    def run(self) -> int:
        """Fork the workers and supervise them until they have all stopped."""
        listen = self._boot.server.listen
        try:
            self._sockets = _bind(listen, self._boot.server.backlog)
        except OSError as exc:
            log.error("cannot listen on %s: %s", listen, exc.strerror)
            return 1
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, _wake)
        log.info(
            "arbiter starting %d workers",
            self._boot.server.workers,
            extra={"fields": {"pid": os.getpid(), "listen": str(listen)}},
        )
        for _ in range(self._boot.server.workers):
            self._spawn()
        while self._workers or not self._stopping:
            self._step()
        self._close_sockets()
        log.info("all workers stopped", extra={"fields": {"exit_code": self._exit_code}})
        return self._exit_code

    def _step(self) -> None:
        for key, _ in self._selector.select(self._timeout()):
            if key.fd == self._wakeup:
                for signum in os.read(self._wakeup, 512):
                    self._on_signal(signum)
            else:
                self._on_report(key.data, os.read(key.fd, 512))
        self._reap()
        now = time.monotonic()
        if self._respawns and self._respawns[0] <= now:
            self._respawns.pop(0)
            self._spawn()
        if self._stopping and not self._killed and now >= self._stop_deadline:
            self._kill_stragglers()
        if self._reloading and now >= self._reload_deadline:
            self._give_up_on_reports()
        if not self._stopping:
            self._kill_hung(now)
        if self._hup_wanted:
            self._reload()

    def _timeout(self) -> float | None:
        """Until the next respawn, heartbeat, stop or reload deadline; None waits for an event."""
        due = self._respawns[:1]
        if self._stopping and not self._killed:
            due = [*due, self._stop_deadline]
        if not self._stopping:
            timeout = self._boot.server.worker_timeout
            for worker in self._workers.values():
                due.append(worker.seen + timeout if worker.kill_at is None else worker.kill_at)
        if self._reloading:
            due = [*due, self._reload_deadline]
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP and not self._stopping:
            self._hup_wanted = True
        elif signum in (signal.SIGTERM, signal.SIGINT):
            self._stop(signal.Signals(signum).name)

    def _spawn(self) -> None:
        read, write = os.pipe2(os.O_CLOEXEC)
        # Signals stay blocked across the fork, so the child cannot run the
        # arbiter's handlers before it has put back the default ones.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(read, write, mask)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write)
        os.set_blocking(read, False)
        worker = Worker(pid, read, seen=time.monotonic())
        self._workers[pid] = worker
        self._selector.register(read, selectors.EVENT_READ, worker)
        log.info("worker started", extra={"fields": {"pid": pid, "generation": self._generation}})

    def _become_worker(self, read: int, report: int, mask: set[int | signal.Signals]) -> NoReturn:
        """The child's side of the fork: shed the arbiter's state, serve, and never return."""
        code = 1
        try:
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # The arbiter is systemd's main pid (NotifyAccess=main ignores
            # anyone else); a worker reports to the arbiter only.
            os.environ.pop("NOTIFY_SOCKET", None)
            # Its own pipe's read end too: with the arbiter gone, a write
            # must fail rather than fill a pipe nobody reads.
            pipes = [w.pipe for w in self._workers.values() if w.pipe >= 0]
            for fd in (read, self._wakeup, self._wakeup_w, *pipes):
                os.close(fd)
            self._selector.close()
            code = serve_worker(self._config, self._generation, report, self._pid, self._sockets)
        except BaseException:
            log.exception("worker failed", extra={"fields": {"pid": os.getpid()}})
        finally:
            # Never unwind into the arbiter's frames (they would remove the
            # metrics directory); flush what logging buffered first.
            sys.stderr.flush()
            os._exit(code)

    def _on_report(self, worker: Worker, data: bytes) -> None:
        if not data:
            # The worker closed its end, so it is exiting; SIGCHLD will follow.
            self._close(worker)
            return
        worker.seen = time.monotonic()
        for event in (data[i : i + 1] for i in range(len(data))):
            if event == READY:
                self._on_ready(worker)
            elif event == RETIRING:
                self._on_retiring(worker)
            elif event in (RELOADED, RELOAD_FAILED) and worker.reloads > 0:
                # Only results the arbiter asked for: `systemctl kill -s HUP`
                # signals every process of the unit, workers included.
                worker.reloads -= 1
                if event == RELOAD_FAILED:
                    self._reload_failures += 1
        self._check_reloaded()

    def _on_ready(self, worker: Worker) -> None:
        worker.ready = True
        log.info("worker ready", extra={"fields": {"pid": worker.pid}})
        if (
            not self._booted
            and len(self._workers) == self._boot.server.workers
            and all(w.ready for w in self._workers.values())
        ):
            self._booted = True
            systemd.ready(status=self._status())

    def _on_retiring(self, worker: Worker) -> None:
        """A worker served max_requests and drains: fork its replacement now."""
        if worker.retiring or self._stopping:
            return
        worker.retiring = True
        # It answers no reload any more: it accepts no new connections.
        worker.reloads = 0
        log.info("worker retiring after max_requests", extra={"fields": {"pid": worker.pid}})
        metrics.WORKER_RESTARTS.labels("max_requests").inc()
        self._spawn()
        self._check_reloaded()

    def _kill_hung(self, now: float) -> None:
        """Workers silent for worker_timeout: have their stacks written, then SIGKILL them."""
        timeout = self._boot.server.worker_timeout
        for worker in self._workers.values():
            if worker.kill_at is not None:
                if now >= worker.kill_at:
                    worker.kill_at = math.inf
                    _signal(worker.pid, signal.SIGKILL)
            elif now - worker.seen > timeout:
                worker.kill_at = now + STACKS_GRACE
                log.error(
                    "worker's event loop is stuck; killing it",
                    extra={"fields": {"pid": worker.pid, "silent_s": round(now - worker.seen, 1)}},
                )
                _signal(worker.pid, STACKS)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self._workers.pop(pid, None)
            if worker is not None:
                self._close(worker)
                # Drops its live gauges (circuit_open, audit_queue_depth); its
                # counters stay, so the group's totals never go backwards.
                mark_process_dead(pid)  # type: ignore[no-untyped-call]
                self._on_exit(worker, status)

    def _close(self, worker: Worker) -> None:
        if worker.pipe >= 0:
            self._selector.unregister(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = -1

    def _on_exit(self, worker: Worker, status: int) -> None:
        fields = {"pid": worker.pid, "exit": _describe(status)}
        if self._stopping or worker.retiring:
            # A retired worker's replacement was forked when it began to drain.
            log.info("worker exited", extra={"fields": fields})
            return
        if not worker.hung:
            log.error("worker died unexpectedly", extra={"fields": fields})
        self._check_reloaded()
        if not self._booted:
            # Some worker never got going (its own log says why: a port in
            # use, an audit file it cannot open): a start-up failure.
            log.error("a worker failed to start; stopping")
            self._exit_code = 1
            self._stop("start-up failure")
            return
        now = time.monotonic()
        self._crashes.append(now)
        while self._crashes[0] < now - START_LIMIT_INTERVAL:
            self._crashes.popleft()
        if len(self._crashes) > START_LIMIT_BURST:
            log.error(
                "workers died %d times in %.0f s; giving up",
                len(self._crashes),
                START_LIMIT_INTERVAL,
            )
            self._exit_code = 1
            self._stop("start limit")
            return
        metrics.WORKER_RESTARTS.labels("timeout" if worker.hung else "died").inc()
        self._respawns.append(now + RESPAWN_BACKOFF * 2 ** (len(self._crashes) - 1))
        self._respawns.sort()

    def _reload(self) -> None:
        """Validate the config file once; forward SIGHUP only if it is good."""
        if self._reloading or not all(w.ready for w in self._workers.values()):
            # One reload at a time, and only workers that are serving can take
            # one; the loop comes back here once they report.
            return
        self._hup_wanted = False
        systemd.reloading()
        try:
            config = load(self._config.source)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload failed: %s", problem)
            log.error(
                "reload failed, workers keep serving the previous configuration",
                extra={"fields": {"generation": self._generation}},
            )
            metrics.CONFIG_RELOADS.labels("error").inc()
            systemd.ready(status=f"reload failed; {self._status()}")
            return
        if config.server.workers != self._boot.server.workers:
            log.warning("server.workers changed: restart gatewayd to apply it")
        gw_logging.configure(config.logging)
        self._config = _keep_static(self._boot, config)
        self._generation += 1
        self._reloading = True
        self._reload_failures = 0
        # A worker builds its new config in well under this; one that has not
        # answered by then must not leave systemd waiting in "reloading".
        self._reload_deadline = time.monotonic() + self._config.server.shutdown_timeout
        for worker in self._workers.values():
            if not worker.retiring:
                worker.reloads += 1
                _signal(worker.pid, signal.SIGHUP)
        self._check_reloaded()

    def _give_up_on_reports(self) -> None:
        """Count the workers that never reported their reload as failed ones."""
        for worker in self._workers.values():
            if worker.reloads > 0:
                log.error(
                    "worker did not report its reload in time",
                    extra={"fields": {"worker_pid": worker.pid}},
                )
                worker.reloads = 0
                self._reload_failures += 1
        self._check_reloaded()

    def _check_reloaded(self) -> None:
        """After a forwarded SIGHUP: once every live worker has answered, READY=1."""
        if not self._reloading or any(w.reloads > 0 for w in self._workers.values()):
            return
        self._reloading = False
        fields = {"generation": self._generation, "failed_workers": self._reload_failures}
        if self._reload_failures:
            metrics.CONFIG_RELOADS.labels("error").inc()
            log.error("reload failed in some workers", extra={"fields": fields})
        else:
            metrics.CONFIG_RELOADS.labels("success").inc()
            log.info("configuration reloaded in every worker", extra={"fields": fields})
        systemd.ready(status=self._status())

    def _stop(self, reason: str) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._respawns.clear()
        # The workers hold their own copies until they have drained; with
        # the last one closed, new connections are refused, not left waiting.
        self._close_sockets()
        systemd.stopping()
        log.info("stopping workers", extra={"fields": {"reason": reason}})
        timeout = max(self._boot.server.shutdown_timeout, self._config.server.shutdown_timeout)
        self._stop_deadline = time.monotonic() + timeout + STOP_GRACE
        for pid in self._workers:
            _signal(pid, signal.SIGTERM)

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []

    def _kill_stragglers(self) -> None:
        self._killed = True
        for pid in self._workers:
            log.warning("worker did not stop in time; killing it", extra={"fields": {"pid": pid}})
            _signal(pid, signal.SIGKILL)

    def _status(self) -> str:
        serving = sum(not w.retiring for w in self._workers.values())
        return (
            f"serving on {self._boot.server.listen} with {serving} workers,"
            f" config generation {self._generation}"
        )


def _wake(signum: int, frame: FrameType | None) -> None:
    """Nothing: set_wakeup_fd has already queued `signum` for the arbiter's loop."""


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        # Exited and not reaped yet: the loop reaps it next.
        return


def _keep_static(boot: Config, new: Config) -> Config:
    """`new`, with the listener, worker count, worker timeout and audit sink of `boot`.

    Running workers keep those until a restart; a worker forked after a
    reload must serve the sockets its siblings serve, write where they
    write, and beat as often as the arbiter expects.
    """
    server = dataclasses.replace(
        new.server,
        listen=boot.server.listen,
        workers=boot.server.workers,
        backlog=boot.server.backlog,
        worker_timeout=boot.server.worker_timeout,
    )
    return dataclasses.replace(new, server=server, audit=boot.audit)


def _bind(listen: Listen, backlog: int) -> list[socket.socket]:
    """Listening sockets for every address `listen` names; OSError if any is taken.

    SO_REUSEADDR, as aiohttp sets it, ignores TIME_WAIT; without
    SO_REUSEPORT the bind fails if anyone already listens there.
    """
    try:
        addresses = socket.getaddrinfo(
            listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(exc.errno, exc.strerror) from None
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def _describe(status: int) -> str:
    """A wait status as `exit status N` or `signal NAME`."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"
